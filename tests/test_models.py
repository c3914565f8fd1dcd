import pytest
import torch

from prunetune.trainers import ModelNotFoundError, build_model, zoo_names


@pytest.mark.parametrize("name", zoo_names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_zoo_model_forward(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, num_classes=10, in_channels=shape[0]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


def test_resnet_depths_have_expected_size() -> None:
    # He et al. 2016: ResNet-20 has ~0.27M parameters, ResNet-56 ~0.85M (ours adds 1x1
    # projection shortcuts, a few thousand parameters more).
    n20 = sum(p.numel() for p in build_model("resnet20").parameters())
    n56 = sum(p.numel() for p in build_model("resnet56").parameters())
    assert 0.26e6 < n20 < 0.30e6 and 0.84e6 < n56 < 0.88e6


@pytest.mark.parametrize("in_channels", [1, 3])
def test_torchvision_model(in_channels: int) -> None:
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 32, 32)).shape == (1, 10)


def test_user_factory_and_unknown_names() -> None:
    model = build_model("tests.fixtures_models:tiny_cnn", num_classes=4, in_channels=1)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 4)
    with pytest.raises(ModelNotFoundError, match="resnet20"):
        build_model("resnet21")
    with pytest.raises(ModelNotFoundError, match="cannot import"):
        build_model("no_such_module:factory")
    with pytest.raises(ModelNotFoundError, match="unknown torchvision model"):
        build_model("torchvision:not_a_model")


def test_timm_model() -> None:
    pytest.importorskip("timm", reason="timm is an optional extra (pip install "
                                       "'prunetune[timm]'); CI installs it")
    model = build_model("timm:resnet18", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ModelNotFoundError, match="unknown timm model"):
        build_model("timm:not_a_model_at_all")
