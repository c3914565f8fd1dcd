"""Block-sparse kernels and modules against dense masked references (CPU: Triton interpreter)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetune.kernels import (
    BlockSparseConv2d,
    BlockSparseLinear,
    SemiStructuredLinear,
    bsr_conv2d,
    bsr_linear,
    bsr_to_dense,
    conv_weight_to_taps,
    dense_to_bsr,
    sparsify_model,
    taps_to_conv_weight,
)
from prunetune.kernels.bsr import choose_block, kernel_block_from_prune_block
from prunetune.search_spaces import from_gemm_view


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter():
    """Run Triton on the CPU interpreter for this module only (kernels are jitted lazily, so
    setting the variable here works whatever imported prunetune.kernels first)."""
    with pytest.MonkeyPatch.context() as mp:
        if not torch.cuda.is_available():
            mp.setenv("TRITON_INTERPRET", "1")
        yield


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Whole-model comparisons: on GPU the dense reference runs cuDNN with TF32, our kernels IEEE fp32.
MODEL_TOL = 1e-4 if DEVICE == "cpu" else 5e-3
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 2e-2)}


def block_mask(rows: int, cols: int, block: tuple[int, int], density: float,
               gen: torch.Generator) -> torch.Tensor:
    """`rows x cols` 0/1 mask made of whole (bo x bi) blocks kept with probability `density`."""
    bo, bi = block
    keep = (torch.rand(-(-rows // bo), -(-cols // bi), generator=gen) < density).float()
    return keep.repeat_interleave(bo, 0).repeat_interleave(bi, 1)[:rows, :cols]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    scale = expected.abs().max().item() + 1.0
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Format conversion


@pytest.mark.parametrize("shape,block", [((70, 100), (32, 16)), ((16, 16), (16, 16)),
                                         ((33, 5, 3, 3), (16, 16)), ((64, 40, 1, 1), (64, 32))])
def test_bsr_roundtrip_and_density(shape: tuple[int, ...], block: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) < 0.3).float()
    bsr = dense_to_bsr(w, mask, block)
    taps = bsr_to_dense(bsr)
    expected = w * mask
    rebuilt = taps.squeeze(1) if w.dim() == 2 else taps_to_conv_weight(taps, shape[2:])
    assert torch.equal(rebuilt, expected)
    assert bsr.crow[-1].item() == bsr.nnzb == bsr.values.shape[0]
    assert bsr.values.shape[1:] == (block[1], block[0])  # blocks stored transposed
    assert bsr.density == pytest.approx(bsr.nnzb * block[0] * block[1] / w.numel())
    assert bsr.nnzb > 0


def test_conv_taps_order_is_r_s_ci() -> None:
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    taps = conv_weight_to_taps(w)
    assert taps.shape == (2, 4, 3)
    assert taps[1, 2, 0] == w[1, 0, 1, 0]  # tap 2 = (r=1, s=0), channel 0
    assert torch.equal(taps_to_conv_weight(taps, (2, 2)), w)


def test_prune_block_translation_and_choice() -> None:
    # Prune blocks lie on the kernels' tap-major view: a kernel-sized one is taken as it is.
    assert kernel_block_from_prune_block((32, 16)) == (32, 16)
    assert kernel_block_from_prune_block((32, 144)) is None
    assert kernel_block_from_prune_block((4, 4)) is None
    gen = torch.Generator().manual_seed(1)
    mask = block_mask(128, 128, (64, 64), 0.5, gen).unsqueeze(1)
    assert choose_block(mask, preferred=(64, 64)) == (64, 64)
    with pytest.raises(ValueError, match="block"):
        dense_to_bsr(torch.ones(4, 4), None, (8, 16))


# ---------------------------------------------------------------------------------------------
# Kernels vs dense references

LINEAR_CASES = [
    # (out, in, batch, block, density, dtype)
    (64, 64, 1, (16, 16), 0.05, torch.float32),
    (100, 72, 7, (32, 16), 0.5, torch.float32),
    (96, 130, 64, (16, 64), 0.3, torch.float16),
    (130, 96, 3, (64, 32), 1.0, torch.float32),
    (65, 33, 17, (32, 32), 0.7, torch.float16),
    (128, 128, 64, (64, 64), 0.1, torch.bfloat16),
    (40, 200, 5, (16, 32), 0.9, torch.float16),
]


@pytest.mark.parametrize("n,k,m,block,density,dtype", LINEAR_CASES)
def test_bsr_linear_matches_dense(n: int, k: int, m: int, block: tuple[int, int],
                                  density: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(n * k + m)
    w = torch.randn(n, k, generator=gen) * block_mask(n, k, block, density, gen)
    x, bias = torch.randn(m, k, generator=gen), torch.randn(n, generator=gen)
    bsr = dense_to_bsr(w, None, block).to(DEVICE, dtype)
    y = bsr_linear(x.to(DEVICE, dtype), bsr, bias.to(DEVICE, dtype))
    assert y.dtype == dtype and y.shape == (m, n)
    expected = F.linear(x.to(dtype).float(), w.to(dtype).float(), bias.to(dtype).float())
    assert_close(y.cpu(), expected, dtype)


CONV_CASES = [
    # (ci, co, hw, kernel, stride, padding, dilation, batch, block, density, dtype, channels_last)
    (20, 40, (9, 7), (3, 3), (2, 1), (1, 1), (1, 2), 2, (16, 16), 0.5, torch.float32, False),
    (32, 32, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, (32, 32), 0.05, torch.float32, True),
    (48, 24, (5, 5), (1, 1), (1, 1), (0, 0), (1, 1), 3, (16, 32), 0.7, torch.float16, False),
    (24, 70, (5, 4), (1, 1), (2, 2), (0, 0), (1, 1), 2, (64, 16), 1.0, torch.float32, True),
    (17, 33, (7, 7), (5, 3), (1, 2), (2, 1), (1, 1), 2, (32, 16), 0.3, torch.float16, True),
]


@pytest.mark.parametrize("ci,co,hw,kernel,stride,padding,dilation,batch,block,density,dtype,cl",
                         CONV_CASES)
def test_bsr_conv_matches_dense(ci: int, co: int, hw: tuple[int, int], kernel: tuple[int, int],
                                stride: tuple[int, int], padding: tuple[int, int],
                                dilation: tuple[int, int], batch: int, block: tuple[int, int],
                                density: float, dtype: torch.dtype, cl: bool) -> None:
    gen = torch.Generator().manual_seed(ci * co)
    taps_mask = block_mask(co, kernel[0] * kernel[1] * ci, block, density, gen)
    mask = taps_to_conv_weight(taps_mask.reshape(co, -1, ci), kernel)
    w = torch.randn(co, ci, *kernel, generator=gen) * mask
    x = torch.randn(batch, ci, *hw, generator=gen)
    bsr = dense_to_bsr(w, mask, block).to(DEVICE, dtype)
    xd = x.to(DEVICE, dtype)
    if cl:
        xd = xd.to(memory_format=torch.channels_last)
    y = bsr_conv2d(xd, bsr, None, kernel_size=kernel, stride=stride, padding=padding,
                   dilation=dilation)
    expected = F.conv2d(x.to(dtype).float(), w.to(dtype).float(), None, stride, padding, dilation)
    assert y.shape == expected.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == cl or y.shape[2:] == (1, 1)
    assert_close(y.cpu(), expected, dtype)


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_match_dense(seed: int) -> None:
    """Random shapes (rarely block multiples), blocks, densities 0.05-1, batch 1-64, fp32/fp16."""
    gen = torch.Generator().manual_seed(1000 + seed)

    def pick(options: tuple) -> object:
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    block = (pick((16, 32, 64)), pick((16, 32, 64)))
    density = 0.05 + 0.95 * float(torch.rand(1, generator=gen))
    dtype = pick((torch.float32, torch.float16))
    batch = int(torch.randint(1, 65, (1,), generator=gen))
    if seed % 2 == 0:  # Linear, sometimes with a token axis (batch x tokens x features)
        n, k = (int(v) for v in torch.randint(8, 150, (2,), generator=gen))
        w = torch.randn(n, k, generator=gen) * block_mask(n, k, block, density, gen)
        x = torch.randn(batch, 3, k, generator=gen) if seed % 4 == 0 else torch.randn(
            batch, k, generator=gen)
        y = bsr_linear(x.to(DEVICE, dtype), dense_to_bsr(w, None, block).to(DEVICE, dtype))
        expected = F.linear(x.to(dtype).float(), w.to(dtype).float())
    else:
        ci, co = (int(v) for v in torch.randint(3, 70, (2,), generator=gen))
        r = pick((1, 3))
        stride, pad = pick((1, 2)), r // 2
        taps_mask = block_mask(co, r * r * ci, block, density, gen).reshape(co, -1, ci)
        w = torch.randn(co, ci, r, r, generator=gen) * taps_to_conv_weight(taps_mask, (r, r))
        x = torch.randn(min(batch, 4), ci, 6, 5, generator=gen)
        y = bsr_conv2d(x.to(DEVICE, dtype), dense_to_bsr(w, None, block).to(DEVICE, dtype), None,
                       kernel_size=(r, r), stride=(stride, stride), padding=(pad, pad))
        expected = F.conv2d(x.to(dtype).float(), w.to(dtype).float(), None, stride, pad)
    assert y.shape == expected.shape
    assert_close(y.cpu(), expected, dtype)


def test_empty_block_rows_and_all_zero_weight() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(96, 40, generator=gen)
    w[32:64] = 0.0  # one empty block row (block 32) in the middle
    bias = torch.randn(96, generator=gen)
    x = torch.randn(5, 40, generator=gen)
    bsr = dense_to_bsr(w, None, (32, 16))
    assert (bsr.crow[2] - bsr.crow[1]).item() == 0
    y = bsr_linear(x.to(DEVICE), bsr.to(DEVICE), bias.to(DEVICE)).cpu()
    torch.testing.assert_close(y, F.linear(x, w, bias), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y[:, 32:64], bias[32:64].expand(5, 32))
    empty = dense_to_bsr(torch.zeros(20, 3, 3, 3), None, (16, 16))
    assert empty.nnzb == 0
    out = bsr_conv2d(torch.randn(2, 3, 4, 4).to(DEVICE), empty.to(DEVICE), None,
                     kernel_size=(3, 3), padding=(1, 1))
    assert out.shape == (2, 20, 4, 4) and not out.any()


# ---------------------------------------------------------------------------------------------
# Modules and swapping


def masked(layer: nn.Module, prune_block: tuple[int, int], density: float, seed: int,
           ) -> nn.Module:
    """Block-prune like the engine: blocks on the tap-major GEMM view (`gemm_view`), a
    `weight_mask` buffer, zeroed weights and the `prune_block` attribute."""
    gen = torch.Generator().manual_seed(seed)
    w = layer.weight
    mask = from_gemm_view(block_mask(w.shape[0], w[0].numel(), prune_block, density, gen),
                          w.shape)
    with torch.no_grad():
        w.mul_(mask)
    layer.register_buffer("weight_mask", mask)
    layer.prune_block = prune_block
    return layer


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)  # never swapped: grouped
        self.fc = nn.Linear(48, 40)
        self.head = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = self.dw(torch.relu(self.conv3(x)))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


def pruned_small_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet().eval()
    # conv2's prune_block (32, 16): 32 filters x 16 channels of one tap (tap-major view).
    masked(net.conv2, (32, 16), 0.3, 1)
    masked(net.conv3, (16, 16), 0.4, 2)
    masked(net.fc, (16, 16), 0.25, 3)
    return net


def test_module_reads_mask_buffer_and_prune_block() -> None:
    net = pruned_small_net()
    lin = BlockSparseLinear.from_dense(net.fc)
    assert lin.block == (16, 16) and lin.density < 1.0
    assert lin.in_features == 48 and lin.out_features == 40
    x = torch.randn(4, 48)
    torch.testing.assert_close(lin(x), net.fc(x), atol=1e-5, rtol=1e-5)  # torch path on CPU
    conv = BlockSparseConv2d.from_dense(net.conv2)
    assert conv.block == (32, 16)  # the prune block, as the kernel's block
    assert conv.density == pytest.approx(net.conv2.weight_mask.mean().item())
    with pytest.raises(ValueError, match="groups=1"):
        BlockSparseConv2d.from_dense(net.dw)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sparsify_model_same_outputs(backend: str) -> None:
    net = pruned_small_net().to(DEVICE)
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    sparse = sparsify_model(net, backend=backend, min_density_gain=0.1)
    kinds = {n: type(m).__name__ for n, m in sparse.named_children()}
    assert kinds["conv2"] == "BlockSparseConv2d" and kinds["conv3"] == "BlockSparseConv2d"
    assert kinds["fc"] == "BlockSparseLinear"
    assert kinds["conv1"] == "Conv2d" and kinds["dw"] == "Conv2d" and kinds["head"] == "Linear"
    assert type(net.conv2) is nn.Conv2d  # input untouched
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), net(x), atol=MODEL_TOL, rtol=MODEL_TOL)


def test_sparsify_respects_min_density_gain_and_skips_nm_on_cpu() -> None:
    net = pruned_small_net()
    assert type(sparsify_model(net, min_density_gain=0.95).conv2) is nn.Conv2d
    lin = nn.Linear(64, 32)
    mask = torch.zeros(32, 64)
    mask.view(32, 16, 4)[..., :2] = 1.0  # 2:4
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    assert SemiStructuredLinear.try_from_dense(lin) is None or DEVICE == "cuda"
    swapped = sparsify_model(nn.Sequential(lin))[0]
    assert not isinstance(swapped, SemiStructuredLinear) or DEVICE == "cuda"


def test_triton_backend_errors_are_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    lin = BlockSparseLinear.from_dense(nn.Linear(32, 32), block=(16, 16), backend="triton")
    x = torch.randn(2, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference_mode"):
        lin(x)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            lin(x.detach())
    with pytest.raises(ValueError, match="backend"):
        sparsify_model(nn.Linear(2, 2), backend="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs CUDA and compiled Triton")
def test_gpu_bf16_large_blocks() -> None:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(512, 1024, generator=gen) * block_mask(512, 1024, (64, 64), 0.3, gen)
    x = torch.randn(300, 1024, generator=gen)
    bsr = dense_to_bsr(w, None, (64, 64)).to("cuda", torch.bfloat16)
    y = bsr_linear(x.to("cuda", torch.bfloat16), bsr)
    assert_close(y.cpu(), F.linear(x.bfloat16().float(), w.bfloat16().float()), torch.bfloat16)


def test_sparsified_zoo_resnet_same_outputs() -> None:
    """Every 3x3/1x1 conv of a CIFAR ResNet-20 block-pruned, swapped in, same logits."""
    from prunetune.trainers import build_model

    torch.manual_seed(0)
    net = build_model("resnet20").eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)][1:]  # keep the 3-channel stem
    for i, conv in enumerate(convs):
        taps = conv.kernel_size[0] * conv.kernel_size[1]
        masked(conv, (16, 16 * taps), 0.2 + 0.6 * (i % 4) / 3, 10 + i)
    net = net.to(DEVICE)
    sparse = sparsify_model(net, backend="triton")
    swapped = sum(isinstance(m, BlockSparseConv2d) for m in sparse.modules())
    assert swapped >= len(convs) // 2
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), net(x), atol=MODEL_TOL, rtol=MODEL_TOL)
