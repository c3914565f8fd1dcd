"""Deployment modules for masked layers, and the function that swaps them into a pruned model.

`BlockSparseLinear` / `BlockSparseConv2d` hold a BSR copy of a masked weight and run the Triton
kernels on CUDA (or on CPU under `TRITON_INTERPRET=1` when asked for `backend="triton"`). On CPU
the default `backend="auto"` uses torch: a `torch.sparse` BSR matmul for a Linear whose blocks
are sparse enough for it to pay, otherwise the dense masked weight. The modules are for
inference (deployment and latency measurement): they hold buffers, not parameters.

N:M (2:4) masks on Linear layers go through `torch.sparse.to_sparse_semi_structured` where the
GPU supports it (compute capability >= 8.0, fp16/bf16); elsewhere such layers are left alone.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunetune.errors import KernelError, KernelInputError, KernelUnavailableError

from .bsr import (
    BSRWeight,
    bsr_to_dense,
    choose_block,
    conv_weight_to_taps,
    dense_to_bsr,
    kernel_block_from_prune_block,
    taps_to_conv_weight,
)
from .triton_bsr import bsr_conv2d, bsr_linear, triton_supported

__all__ = [
    "DEFAULT_MIN_DENSITY_GAIN",
    "Backend",
    "BlockSparseConv2d",
    "BlockSparseLinear",
    "SemiStructuredLinear",
    "is_nm_mask",
    "layer_mask",
    "resolve_backend",
    "semi_structured_supported",
    "sparsify_model",
]

Backend = Literal["auto", "triton", "torch"]
_BACKENDS = ("auto", "triton", "torch")

# Swap a layer only when its BSR copy stores at most 70% of the dense weight: above that the
# dense GEMM libraries win on every device we measured.
DEFAULT_MIN_DENSITY_GAIN = 0.3
# torch's CPU BSR matmul (MKL) beats the dense fp32 GEMM only below about 20% block density
# (measured on x86 with 512 x 512 weights, blocks 16 and 32).
_CPU_BSR_MAX_DENSITY = 0.2


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'triton' on CUDA when Triton is usable, else 'torch'. Explicit names pass
    through after validation ('triton' on CPU needs TRITON_INTERPRET=1)."""
    if backend not in _BACKENDS:
        raise KernelError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_supported(device) else "torch"
    return backend


def layer_mask(layer: nn.Module, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The explicit mask, else the layer's `weight_mask` buffer, else `weight != 0`."""
    weight = layer.weight
    if mask is None:
        mask = getattr(layer, "weight_mask", None)
    if mask is None:
        mask = weight != 0
    if mask.shape != weight.shape:
        raise KernelError(f"mask shape {tuple(mask.shape)} must equal the weight shape "
                          f"{tuple(weight.shape)}")
    return mask.to(weight.device)


def _pick_block(layer: nn.Module, mask: torch.Tensor, taps: int,
                block: tuple[int, int] | None) -> tuple[int, int]:
    if block is not None:
        return (int(block[0]), int(block[1]))
    preferred = kernel_block_from_prune_block(getattr(layer, "prune_block", None))
    return choose_block(conv_weight_to_taps(mask), preferred=preferred)


class _BlockSparseBase(nn.Module):
    """Shared storage: the BSR arrays as buffers, the bias, and a cached dense copy."""

    def __init__(self, bsr: BSRWeight, bias: torch.Tensor | None, backend: str) -> None:
        super().__init__()
        resolve_backend(backend, "cpu")  # validates the name
        self.backend = backend
        self.register_buffer("values", bsr.values)
        self.register_buffer("crow", bsr.crow)
        self.register_buffer("col", bsr.col)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.n_out, self.taps, self.channels, self.block = (bsr.n_out, bsr.taps, bsr.channels,
                                                            bsr.block)
        self._dense: torch.Tensor | None = None
        self._torch_bsr: torch.Tensor | None = None

    @property
    def bsr(self) -> BSRWeight:
        return BSRWeight(self.values, self.crow, self.col, self.n_out, self.taps, self.channels,
                         self.block)

    @property
    def density(self) -> float:
        """Stored elements over dense elements (block padding included)."""
        return self.bsr.density

    def _apply(self, fn, recurse: bool = True):
        # Moving or casting the module invalidates the derived copies.
        self._dense, self._torch_bsr = None, None
        return super()._apply(fn, recurse)

    def dense_weight(self) -> torch.Tensor:
        """The masked weight in the original layer's layout (cached for the torch backend)."""
        if self._dense is None or self._dense.device != self.values.device:
            self._dense = self._from_taps(bsr_to_dense(self.bsr))
        return self._dense

    def _from_taps(self, taps: torch.Tensor) -> torch.Tensor:
        return taps.squeeze(1)

    def _use_triton(self, x: torch.Tensor) -> bool:
        if resolve_backend(self.backend, x.device) != "triton":
            return False
        if torch.is_grad_enabled() and x.requires_grad:
            raise KernelUnavailableError(
                f"{type(self).__name__} with the Triton backend is inference-only and the input "
                "requires grad; wrap the call in torch.inference_mode() or use backend='torch'")
        return True

    def extra_repr(self) -> str:
        return (f"out={self.n_out}, taps={self.taps}, channels={self.channels}, "
                f"block={self.block}, density={self.density:.3f}, backend={self.backend!r}")


class BlockSparseLinear(_BlockSparseBase):
    """`nn.Linear` with a block-sparse weight: `... x in_features` -> `... x out_features`."""

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor | None = None,
                   block: tuple[int, int] | None = None, *, backend: str = "auto",
                   ) -> BlockSparseLinear:
        """Build from a (masked) Linear. `mask` defaults to its `weight_mask` buffer; `block`
        to the kernel block matching its `prune_block`, else the cheapest for the mask."""
        if not isinstance(linear, nn.Linear):
            raise KernelInputError(f"from_dense needs an nn.Linear, got {type(linear).__name__}")
        mask = layer_mask(linear, mask)
        block = _pick_block(linear, mask, 1, block)
        bsr = dense_to_bsr(linear.weight.detach(), mask, block)
        return cls(bsr, linear.bias, backend)

    @property
    def in_features(self) -> int:
        return self.channels

    @property
    def out_features(self) -> int:
        return self.n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            return bsr_linear(x, self.bsr, self.bias)
        torch_bsr = self._cpu_bsr(x)
        if torch_bsr is not None:
            y = (torch_bsr @ x.reshape(-1, self.channels).t()).t()
            y = y.reshape(*x.shape[:-1], self.n_out)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dense_weight(), self.bias)

    def _cpu_bsr(self, x: torch.Tensor) -> torch.Tensor | None:
        """A torch BSR copy where torch's CPU BSR matmul beats dense, else None."""
        bo, bi = self.block
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.n_out % bo
                or self.channels % bi or self.density > _CPU_BSR_MAX_DENSITY
                or (torch.is_grad_enabled() and x.requires_grad)):
            return None
        if self._torch_bsr is None:
            with warnings.catch_warnings():  # "BSR support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                self._torch_bsr = torch.sparse_bsr_tensor(
                    self.crow, self.col, self.values.transpose(1, 2).contiguous(),
                    size=(self.n_out, self.channels))
        return self._torch_bsr


def _conv_padding(conv: nn.Conv2d) -> tuple[tuple[int, int], bool]:
    """(top/left padding, is_same) for int/tuple or 'valid'/'same' padding."""
    if conv.padding == "valid":
        return (0, 0), False
    if conv.padding == "same":
        # torch puts the odd extra pixel on the bottom/right; the top/left share is total // 2.
        pads = zip(conv.dilation, conv.kernel_size, strict=True)
        return tuple(d * (k - 1) // 2 for d, k in pads), True
    return (int(conv.padding[0]), int(conv.padding[1])), False


class BlockSparseConv2d(_BlockSparseBase):
    """`nn.Conv2d` (groups=1, zero padding) with a block-sparse weight, run as implicit GEMM.

    Input `B x Ci x H x W` -> output `B x Co x Ho x Wo` (channels-last in, channels-last out).
    """

    def __init__(self, bsr: BSRWeight, bias: torch.Tensor | None, backend: str, *,
                 kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], same: bool) -> None:
        super().__init__(bsr, bias, backend)
        self.kernel_size, self.stride, self.padding, self.dilation = (
            kernel_size, stride, padding, dilation)
        self.same = same

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None,
                   block: tuple[int, int] | None = None, *, backend: str = "auto",
                   ) -> BlockSparseConv2d:
        """Build from a (masked) Conv2d; `mask` and `block` as in `BlockSparseLinear`."""
        if not isinstance(conv, nn.Conv2d):
            raise KernelInputError(f"from_dense needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise KernelError(f"block-sparse convolution needs groups=1 and padding_mode='zeros', "
                              f"got groups={conv.groups}, padding_mode={conv.padding_mode!r}; "
                              "leave such layers dense")
        mask = layer_mask(conv, mask)
        kh, kw = conv.kernel_size
        block = _pick_block(conv, mask, kh * kw, block)
        bsr = dense_to_bsr(conv.weight.detach(), mask, block)
        padding, same = _conv_padding(conv)
        return cls(bsr, conv.bias, backend, kernel_size=(kh, kw), stride=tuple(conv.stride),
                   padding=padding, dilation=tuple(conv.dilation), same=same)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            out_size = tuple(x.shape[2:]) if self.same else None
            return bsr_conv2d(x, self.bsr, self.bias, kernel_size=self.kernel_size,
                              stride=self.stride, padding=self.padding,
                              dilation=self.dilation, out_size=out_size)
        padding = "same" if self.same else self.padding
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, padding, self.dilation)

    def _from_taps(self, taps: torch.Tensor) -> torch.Tensor:
        return taps_to_conv_weight(taps, self.kernel_size)


# --------------------------------------------------------------------------------------------
# N:M through PyTorch semi-structured sparsity


def is_nm_mask(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of `m` consecutive inputs of each output row keeps at most `n`."""
    flat = mask.reshape(mask.shape[0], -1)
    if flat.shape[1] % m:
        return False
    return bool(((flat != 0).reshape(flat.shape[0], -1, m).sum(-1) <= n).all())


def semi_structured_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """2:4 semi-structured kernels need CUDA compute capability >= 8.0 and fp16/bf16."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return (torch.cuda.get_device_capability(device) >= (8, 0)
            and dtype in (torch.float16, torch.bfloat16))


class SemiStructuredLinear(nn.Module):
    """`nn.Linear` whose 2:4-sparse weight is a `torch.sparse` semi-structured tensor (GPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight  # SparseSemiStructuredTensor: not a buffer, it does not state_dict
        self.bias = None if bias is None else bias.detach().clone()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def try_from_dense(cls, linear: nn.Linear, mask: torch.Tensor | None = None,
                       ) -> SemiStructuredLinear | None:
        """The converted layer, or None where the device, dtype, shape or mask do not allow it."""
        weight = linear.weight.detach()
        mask = layer_mask(linear, mask)
        if not (semi_structured_supported(weight.device, weight.dtype) and is_nm_mask(mask)):
            return None
        try:
            sparse = torch.sparse.to_sparse_semi_structured(weight * mask.to(weight.dtype))
            layer = cls(sparse, linear.bias)
            layer(torch.zeros(64, weight.shape[1], device=weight.device, dtype=weight.dtype))
        except (RuntimeError, ValueError, NotImplementedError):
            return None  # shape or build constraints of the installed torch: stay dense
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


# --------------------------------------------------------------------------------------------
# Swapping


def _sparse_replacement(module: nn.Module, min_density_gain: float, backend: str,
                        block: tuple[int, int] | None, nm: bool) -> nn.Module | None:
    if getattr(module, "weight_mask", None) is None:
        return None  # dense or channel-pruned: nothing to exploit
    if isinstance(module, nn.Linear):
        if nm:
            semi = SemiStructuredLinear.try_from_dense(module)
            if semi is not None:
                return semi
        candidate: nn.Module = BlockSparseLinear.from_dense(module, block=block, backend=backend)
    elif (isinstance(module, nn.Conv2d) and module.groups == 1
          and module.padding_mode == "zeros"):
        candidate = BlockSparseConv2d.from_dense(module, block=block, backend=backend)
    else:
        return None
    return candidate if 1.0 - candidate.density >= min_density_gain else None


def sparsify_model(model: nn.Module, *, min_density_gain: float = DEFAULT_MIN_DENSITY_GAIN,
                   backend: str = "auto", block: tuple[int, int] | None = None,
                   nm: bool = True) -> nn.Module:
    """A copy of `model` with masked Linear / Conv2d layers swapped for sparse modules.

    A layer qualifies when it carries a `weight_mask` buffer and its BSR copy stores at most
    `1 - min_density_gain` of the dense weight; 2:4 masks on Linear layers use semi-structured
    sparsity where supported (`nm=True`). The input model is not modified. The copy is in eval
    mode and meant for inference.
    """
    if not 0.0 <= min_density_gain <= 1.0:
        raise KernelError(f"min_density_gain must lie in [0, 1], got {min_density_gain}")
    resolve_backend(backend, "cpu")
    result = copy.deepcopy(model).eval()
    with torch.no_grad():
        for parent in list(result.modules()):
            for name, child in list(parent.named_children()):
                new = _sparse_replacement(child, min_density_gain, backend, block, nm)
                if new is not None:
                    setattr(parent, name, new)
    return result
