"""Attention heads of torchvision's Swin (`ShiftedWindowAttention`, `ShiftedWindowAttentionV2`)
as prunable units (issue 29, "heads and widths").

Their forward passes the `qkv` and `proj` weights to `F.linear` inside
`shifted_window_attention`, so Torch-Pruning's dependency graph never sees those layers, and
the function reshapes by `C // num_heads` with the input width `C`: the module cannot lose
heads and stay itself. A head-pruned one is replaced by `SwinHeadsAttention`, which runs the
same math (cyclic shift, window partition, shift mask, relative position bias; V2: cosine
attention with a per-head `logit_scale` and the `cpb_mlp` position bias) with fewer heads, an
inner width of `num_heads * head_dim` and the dense output width. Its state dict has the same
keys, its per-head tensors sliced to the kept heads. Heads are ranked by the L2 norm of their
q, k, v rows and `proj` columns, as `nn.MultiheadAttention`'s are (`heads.packed_head_scores`).

timm's Swin `WindowAttention` runs `qkv` and `proj` as modules, but its qkv rows reach an
unbind and its bias table is per head, so it is a heads unit the same way; as its forward
reshapes by `num_heads` and the inner width, it loses heads in place (`qkv`, `proj` and the
bias table sliced, `num_heads` set) instead of being replaced.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .heads import packed_head_scores, qkv_rows

__all__ = ["SwinHeadsAttention", "replace_swin_heads", "swin_attentions", "swin_head_scores",
           "swin_parts", "zero_swin_heads"]


def _swin_types() -> tuple[type, ...]:
    # Only a model built by torchvision can hold one, and then the module is imported already:
    # looking it up keeps every other model from importing torchvision's Swin. Exact types:
    # a subclass may compute its attention differently.
    mod = sys.modules.get("torchvision.models.swin_transformer")
    if mod is None:
        return ()
    return tuple(getattr(mod, n) for n in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")
                 if isinstance(getattr(mod, n, None), type))


def _timm_window_types() -> tuple[type, ...]:
    # timm stays optional: a model built by timm has imported it already
    found = []
    for mod_name in ("timm.models.swin_transformer", "timm.models.swin_transformer_v2"):
        mod = sys.modules.get(mod_name)
        cls = getattr(mod, "WindowAttention", None) if mod is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _is_v2(attn: nn.Module) -> bool:
    return hasattr(attn, "cpb_mlp")


def swin_attentions(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every torchvision Swin attention (and timm Swin `WindowAttention`,
    `SwinHeadsAttention`) of `model` whose heads can be pruned: more than one head, `qkv`
    rows laid out (3, heads, head_dim) (torchvision's: head_dim = its width / heads)."""
    tv_types, timm_types = _swin_types(), _timm_window_types()
    out: dict[str, nn.Module] = {}
    for name, attn in model.named_modules():
        is_tv = type(attn) in tv_types
        # a SwinHeadsAttention (a pruned model analysed again) can lose more heads
        if not is_tv and type(attn) not in (SwinHeadsAttention, *timm_types,
                                            *_TIMM_V2_HEADS.values()):
            continue
        qkv, proj, heads = attn.qkv, attn.proj, attn.num_heads
        inner = proj.in_features
        if (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and heads > 1
                and inner % heads == 0 and qkv.out_features == 3 * inner
                and (not is_tv or qkv.in_features == inner)):
            out[name] = attn
    return out


def swin_parts(attn: nn.Module) -> dict[nn.Module, str]:
    """The modules whose outputs ("out") / inputs ("in") scale with the kept heads
    (`CostModel.m_out` / `m_in`): `qkv` (and the attention products computed from it), the
    module's own per-head parameters, `proj`'s inputs, V2's last `cpb_mlp` layer."""
    parts = {attn.qkv: "out", attn.proj: "in", attn: "out"}
    if _is_v2(attn):
        parts[attn.cpb_mlp[-1]] = "out"
    return parts


@torch.no_grad()
def swin_head_scores(attn: nn.Module) -> torch.Tensor:
    """(num_heads,) the magnitude of each head: the L2 norm of its q, k, v rows of `qkv` and
    its columns of `proj`."""
    return packed_head_scores(attn.qkv.weight, attn.proj.weight, attn.num_heads)


@torch.no_grad()
def zero_swin_heads(attn: nn.Module, cut: list[int]) -> None:
    """Zero, in place, the q, k, v rows (weights and biases) and `proj` columns of heads `cut`.
    Such a head's values are zero, so its output is zero whatever its attention weights (its
    position bias and logit scale): the block computes what the pruned one does."""
    inner = attn.qkv.out_features // 3
    rows = qkv_rows(cut, inner // attn.num_heads, inner)
    attn.qkv.weight[rows] = 0.0
    if attn.qkv.bias is not None:
        attn.qkv.bias[rows] = 0.0
    for name in ("q_bias", "v_bias"):  # timm V2 keeps its q and v biases apart
        bias = getattr(attn, name, None)
        if isinstance(bias, torch.Tensor):
            bias[rows[: len(rows) // 3]] = 0.0
    attn.proj.weight[:, rows[: len(rows) // 3]] = 0.0


class SwinHeadsAttention(nn.Module):
    """torchvision's `ShiftedWindowAttention` (`v2`: `ShiftedWindowAttentionV2`) with fewer
    heads than its input width implies: `qkv` Linear(dim, 3 * num_heads * head_dim), `proj`
    Linear(num_heads * head_dim, dim). Built from the dense module by `from_swin`."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int,
                 head_dim: int, *, qkv_bias: bool, proj_bias: bool, attention_dropout: float,
                 dropout: float, v2: bool) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim, self.v2 = num_heads, head_dim, v2
        self.attention_dropout, self.dropout = float(attention_dropout), float(dropout)
        self.kept_heads, self.dense_heads = tuple(range(num_heads)), num_heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        table = (2 * window_size[0] - 1) * (2 * window_size[1] - 1)
        if v2:
            self.logit_scale = nn.Parameter(torch.zeros(num_heads, 1, 1))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                         nn.Linear(512, num_heads, bias=False))
            self.register_buffer("relative_coords_table",
                                 torch.zeros(1, 2 * window_size[0] - 1, 2 * window_size[1] - 1, 2))
        else:
            self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        n = window_size[0] * window_size[1]
        self.register_buffer("relative_position_index", torch.zeros(n * n, dtype=torch.long))

    @classmethod
    @torch.no_grad()
    def from_swin(cls, attn: nn.Module, keep: list[int]) -> SwinHeadsAttention:
        """The heads `keep` (indices) of `attn` (a torchvision Swin attention or one of these),
        their weights copied."""
        inner = attn.qkv.out_features // 3
        head_dim = inner // attn.num_heads
        v2 = _is_v2(attn)
        new = cls(attn.qkv.in_features, attn.window_size, attn.shift_size, len(keep), head_dim,
                  qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
                  attention_dropout=attn.attention_dropout, dropout=attn.dropout, v2=v2)
        weight = attn.qkv.weight
        new.to(weight.device, weight.dtype)
        before = getattr(attn, "kept_heads", tuple(range(attn.num_heads)))
        new.kept_heads = tuple(before[h] for h in keep)
        new.dense_heads = getattr(attn, "dense_heads", attn.num_heads)
        rows = qkv_rows(keep, head_dim, inner).to(weight.device)
        new.qkv.weight.copy_(weight[rows])
        if new.qkv.bias is not None:
            new.qkv.bias.copy_(attn.qkv.bias[rows])
        new.proj.weight.copy_(attn.proj.weight[:, rows[: len(rows) // 3]])
        if new.proj.bias is not None:
            new.proj.bias.copy_(attn.proj.bias)
        new.relative_position_index.copy_(attn.relative_position_index)
        if v2:
            new.logit_scale.copy_(attn.logit_scale[keep])
            new.cpb_mlp[0].load_state_dict(attn.cpb_mlp[0].state_dict())
            new.cpb_mlp[2].weight.copy_(attn.cpb_mlp[2].weight[keep])
            new.relative_coords_table.copy_(attn.relative_coords_table)
        else:
            new.relative_position_bias_table.copy_(attn.relative_position_bias_table[:, keep])
        new.train(attn.training)
        return new

    def position_bias(self) -> torch.Tensor:
        """(1, num_heads, N, N) relative position bias of the kept heads (N: window tokens)."""
        table = (self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2
                 else self.relative_position_bias_table)
        n = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index].view(n, n, -1)
        bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, dim) -> (B, H, W, dim), as torchvision's `shifted_window_attention`."""
        batch, height, width, dim = x.shape
        windows, shift, (pad_h, pad_w) = _partition(x, self.window_size, self.shift_size)
        out = self._attend(windows, shift, pad_h, pad_w)
        out = F.dropout(out, p=self.dropout, training=self.training)
        return _merge(out, batch, pad_h, pad_w, self.window_size, shift)[:, :height, :width, :]

    def _attend(self, x: torch.Tensor, shift: list[int], pad_h: int, pad_w: int
                ) -> torch.Tensor:
        """Multi-head attention within each window, `x`: (B * windows, N, dim)."""
        heads, inner = self.num_heads, self.num_heads * self.head_dim
        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:  # V2 has no key bias
            qkv_bias = qkv_bias.clone()
            qkv_bias[inner: 2 * inner].zero_()
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.v2:  # cosine attention
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            attn = (q * self.head_dim ** -0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.position_bias()
        if sum(shift) > 0:
            mask = _shift_mask(x, pad_h, pad_w, self.window_size, shift)
            n_win = mask.shape[0]
            attn = attn.view(x.size(0) // n_win, n_win, heads, x.size(1), x.size(1))
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, x.size(1), x.size(1))
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout,
                         training=self.training)
        out = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), inner)
        return F.linear(out, self.proj.weight, self.proj.bias)


def _partition(x: torch.Tensor, window: list[int], shift_size: list[int]
               ) -> tuple[torch.Tensor, list[int], tuple[int, int]]:
    """x (B, H, W, C) padded to whole windows, cyclically shifted, cut into windows:
    ((B * windows, window tokens, C), the shift used, the padded (H, W))."""
    _, height, width, dim = x.shape
    pad_r = (window[1] - width % window[1]) % window[1]
    pad_b = (window[0] - height % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    batch, pad_h, pad_w, _ = x.shape
    # a window as large as the feature map needs no shift
    shift = [0 if window[0] >= pad_h else shift_size[0], 0 if window[1] >= pad_w else shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    n_win = (pad_h // window[0]) * (pad_w // window[1])
    x = x.view(batch, pad_h // window[0], window[0], pad_w // window[1], window[1], dim)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * n_win, window[0] * window[1], dim)
    return x, shift, (pad_h, pad_w)


def _merge(x: torch.Tensor, batch: int, pad_h: int, pad_w: int, window: list[int],
           shift: list[int]) -> torch.Tensor:
    """The windows (B * windows, N, C) back to a (B, pad_H, pad_W, C) map, shifted back."""
    dim = x.shape[-1]
    x = x.view(batch, pad_h // window[0], pad_w // window[1], window[0], window[1], dim)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, dim)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x


def _shift_mask(x: torch.Tensor, pad_h: int, pad_w: int, window: list[int], shift: list[int]
                ) -> torch.Tensor:
    """(windows, N, N) -100 between tokens of a shifted window that were not neighbours."""
    mask = x.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0]: h[1], w[0]: w[1]] = count
            count += 1
    n_win = (pad_h // window[0]) * (pad_w // window[1])
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(n_win, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@torch.no_grad()
def _sliced_linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None
                   ) -> nn.Linear:
    weight = layer.weight if rows is None else layer.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    new.to(layer.weight.device, layer.weight.dtype)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias if rows is None else layer.bias[rows])
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    return new


def _sliced_param(param: torch.Tensor, index: torch.Tensor | list[int], dim: int
                  ) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, torch.as_tensor(
        index, device=param.device)).clone(), requires_grad=param.requires_grad)


@torch.no_grad()
def _cut_timm_window(attn: nn.Module, keep: list[int]) -> None:
    """A timm `WindowAttention` (V1 or V2) with only the heads `keep`, in place (its forward
    reshapes by `num_heads` and infers the head width): `qkv` rows, `proj` columns, the per-head
    bias table (V1), the q / k / v biases, `logit_scale` and last `cpb_mlp` layer (V2)."""
    inner = attn.proj.in_features
    rows = qkv_rows(keep, inner // attn.num_heads, inner).to(attn.qkv.weight.device)
    per_head = rows[: len(rows) // 3]
    attn.qkv = _sliced_linear(attn.qkv, rows, None)
    attn.proj = _sliced_linear(attn.proj, None, per_head)
    if isinstance(getattr(attn, "relative_position_bias_table", None), torch.Tensor):
        attn.relative_position_bias_table = _sliced_param(attn.relative_position_bias_table,
                                                          keep, 1)
    for name in ("q_bias", "v_bias"):
        if isinstance(getattr(attn, name, None), torch.Tensor):
            setattr(attn, name, _sliced_param(getattr(attn, name), per_head, 0))
    if isinstance(getattr(attn, "k_bias", None), torch.Tensor):  # a buffer of zeros
        attn.k_bias = attn.k_bias[per_head].clone()
    if _is_v2(attn):
        attn.logit_scale = _sliced_param(attn.logit_scale, keep, 0)
        last = attn.cpb_mlp[-1]
        attn.cpb_mlp[len(attn.cpb_mlp) - 1] = _sliced_linear(
            last, torch.as_tensor(keep, device=last.weight.device), None)
        # its forward reshapes the heads' output by the input width: a subclass's does not
        attn.__class__ = _timm_v2_heads_class(type(attn))
    attn.num_heads = len(keep)


_TIMM_V2_HEADS: dict[type, type] = {}


def _timm_v2_heads_class(base: type) -> type:
    """timm's V2 `WindowAttention` (`base`) with `_timm_v2_forward` (made once per base)."""
    if base.__name__ == "WindowAttentionHeads":
        return base
    if base not in _TIMM_V2_HEADS:
        _TIMM_V2_HEADS[base] = type("WindowAttentionHeads", (base,), {
            "forward": _timm_v2_forward, "__module__": __name__,
            "__doc__": "timm's V2 WindowAttention with fewer heads (prunetune swin_heads)"})
    return _TIMM_V2_HEADS[base]


def __getattr__(name: str) -> type:
    # A pickled model (torch.save of the whole module) names the class by this module: made
    # on first use, as timm is optional.
    if name == "WindowAttentionHeads":
        from timm.models.swin_transformer_v2 import WindowAttention

        return _timm_v2_heads_class(WindowAttention)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _timm_v2_forward(self: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """timm 1.0's V2 `WindowAttention.forward`, its output reshaped by the heads' inner
    width (num_heads * head_dim) rather than the input width."""
    batch, n, _ = x.shape
    if self.q_bias is None:
        qkv = self.qkv(x)
    elif self.qkv_bias_separate:
        qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
    else:
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
    q, k, v = qkv.reshape(batch, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
    table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
    area = self.window_size[0] * self.window_size[1]
    bias = table[self.relative_position_index.view(-1)].view(area, area, -1)
    attn = attn + 16 * torch.sigmoid(bias.permute(2, 0, 1).contiguous()).unsqueeze(0)
    if mask is not None:
        num_win = mask.shape[0]
        attn = attn.view(-1, num_win, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, self.num_heads, n, n)
    attn = self.attn_drop(self.softmax(attn))
    out = (attn @ v).transpose(1, 2).reshape(batch, n, -1)
    return self.proj_drop(self.proj(out))


def replace_swin_heads(model: nn.Module, cuts: dict[str, list[int]]) -> None:
    """Replace each torchvision Swin attention named in `cuts` by a `SwinHeadsAttention`
    without the heads listed; cut a timm `WindowAttention`'s heads in place."""
    timm_types = _timm_window_types()
    for name, cut in cuts.items():
        if not cut:
            continue
        attn = model.get_submodule(name)
        keep = [h for h in range(attn.num_heads) if h not in set(cut)]
        if type(attn) in (*timm_types, *_TIMM_V2_HEADS.values()):
            _cut_timm_window(attn, keep)
        else:
            model.set_submodule(name, SwinHeadsAttention.from_swin(attn, keep))
