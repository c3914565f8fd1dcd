from pathlib import Path

import pytest
import torch

from prunetune.trainers import DataConfig, DatasetNotFoundError, load_data
from prunetune.trainers import data as data_mod

FMNIST = data_mod.FASHION_MNIST_SYSTEM_DIR


def _disjoint(*index_sets: torch.Tensor) -> bool:
    seen: set[int] = set()
    for idx in index_sets:
        s = set(idx.tolist())
        if seen & s:
            return False
        seen |= s
    return True


def test_digits_splits_disjoint_deterministic_and_cover() -> None:
    cfg = DataConfig(name="digits", val_fraction=0.2)
    a, b = load_data(cfg), load_data(cfg)
    ia, ib = a.split_indices, b.split_indices
    assert _disjoint(ia["train"], ia["val"])
    assert torch.equal(ia["train"], ib["train"]) and torch.equal(ia["val"], ib["val"])
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.num_classes == 10 and a.in_channels == 1 and a.image_size == (8, 8)
    # A different split seed re-carves validation but leaves test untouched.
    c = load_data(DataConfig(name="digits", val_fraction=0.2, split_seed=1))
    assert not torch.equal(ia["val"], c.split_indices["val"])
    assert torch.equal(a.test.images, c.test.images)


def test_subsets_take_prefix_of_seeded_order() -> None:
    full = load_data(DataConfig(name="digits"))
    sub = load_data(DataConfig(name="digits", train_subset=100, val_subset=20, test_subset=30))
    assert (len(sub.train), len(sub.val), len(sub.test)) == (100, 20, 30)
    assert torch.equal(sub.split_indices["train"], full.split_indices["train"][:100])


def test_loader_normalises_and_batches() -> None:
    bundle = load_data(DataConfig(name="digits", batch_size=32, augment=False))
    x, y = next(iter(bundle.loader("train")))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5  # normalised, not raw [0, 1] pixels


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package() -> None:
    bundle = load_data(DataConfig(name="fashion-mnist", test_subset=1000))
    ix = bundle.split_indices
    assert len(bundle.train) == 54000 and len(bundle.val) == 6000 and len(bundle.test) == 1000
    assert _disjoint(ix["train"], ix["val"])
    assert bundle.in_channels == 1 and bundle.image_size == (28, 28)
    again = load_data(DataConfig(name="fashion-mnist", test_subset=1000))
    assert torch.equal(ix["val"], again.split_indices["val"])


def test_missing_fashion_mnist_says_where_it_looked(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "env-data"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_data(DataConfig(name="fashion-mnist"))
    msg = str(err.value)
    assert str(tmp_path / "env-data") in msg and str(tmp_path / "no-such-dir") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "allow_download" in msg


def write_fake_fashion_mnist(folder: Path, n: int = 20) -> None:
    """The four idx files of a tiny Fashion-MNIST (random pixels) in `folder`."""
    import gzip
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", n)):
        images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        for kind, tensor in (("images", images), ("labels", labels)):
            header = struct.pack(">HBB", 0, 0x08, tensor.ndim)
            header += struct.pack(">" + "I" * tensor.ndim, *tensor.shape)
            with gzip.open(folder / f"{split}-{kind}-idx{tensor.ndim}-ubyte.gz", "wb") as f:
                f.write(header + tensor.numpy().tobytes())


def test_a_fashion_mnist_root_that_is_not_there_is_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy elsewhere ($PRUNETUNE_DATA): a data.root with a typo must not fall back to it.
    write_fake_fashion_mnist(tmp_path / "env-data")
    monkeypatch.setenv("PRUNETUNE_DATA", str(tmp_path / "env-data"))
    assert len(load_data(DataConfig(name="fashion-mnist", val_fraction=0.5)).train) == 10
    with pytest.raises(DatasetNotFoundError) as err:
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "typo")))
    msg = str(err.value)
    assert f"data.root {tmp_path / 'typo'} does not exist" in msg and "allow_download" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds none of the four idx files"):
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "empty")))


def test_missing_cifar_and_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path / "absent")))


def test_imagefolder_from_a_real_folder(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        for i in range(10):
            d = tmp_path / cls
            d.mkdir(exist_ok=True)
            Image.new("RGB", (20, 20), (i * 20, 0, 100 if cls == "cat" else 0)).save(d / f"{i}.png")
    bundle = load_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert bundle.num_classes == 2 and len(bundle.test) == 4
    assert len(bundle.train) + len(bundle.val) == 16
    x, _ = bundle.train[0]
    assert x.shape == (3, 16, 16)
