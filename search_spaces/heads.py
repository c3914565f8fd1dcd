"""Attention heads as prunable units (issue 29, "heads and widths").

Two kinds of attention are known:

- timm's `Attention` (ViT, DeiT): a `qkv` Linear(dim, 3 * heads * head_dim) whose rows are
  laid out (3, heads, head_dim), a `proj` Linear(heads * head_dim, dim), and `num_heads`,
  `head_dim`, `attn_dim` attributes its forward reshapes by. Torch-Pruning's dependency graph
  follows the qkv -> reshape -> unbind -> attention -> proj chain: removing `proj`'s input
  columns of a head removes that head's q, k and v rows of `qkv` (as Torch-Pruning's own
  `prune_num_heads` does, rooting the group at `proj`). Afterwards the module's head count is
  set (`fix_heads`).
- `nn.MultiheadAttention` (torchvision's ViT): its inner width must equal its embedding width,
  so it cannot lose heads and stay itself. A head-pruned one is replaced by `HeadsAttention`,
  which runs the same math with fewer heads and keeps the dense output width.

torchvision's Swin attention, a third kind, is in `swin_heads.py`.

Arbitrary rows of a `qkv` layer are never cut: that breaks the reshape or mixes heads. A unit
whose channels reach an unbind the graph follows but that is no known attention loses the
`channel` scheme (`analysis.graph_units`).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadsAttention", "cut_heads", "fix_heads", "head_scores", "mha_modules", "qkv_rows",
           "packed_head_scores", "replace_mha_heads", "timm_attentions", "zero_mha_heads"]


def _timm_attention_types() -> tuple[type, ...]:
    # Only a model built by timm can hold one, and then timm is imported already: looking it
    # up instead of importing it keeps timm optional. Exact types only: a subclass may reshape
    # differently (rotary embeddings, fused heads).
    found = []
    for mod_name in ("timm.layers.attention", "timm.models.vision_transformer"):
        mod = sys.modules.get(mod_name)
        cls = getattr(mod, "Attention", None) if mod is not None else None
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def timm_attentions(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """{qkv Linear: its timm Attention} for every timm attention of `model` whose qkv rows
    are laid out (3, num_heads, head_dim)."""
    types = _timm_attention_types()
    out: dict[nn.Module, nn.Module] = {}
    if not types:
        return out
    for module in model.modules():
        if type(module) not in types:
            continue
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        heads, head_dim = getattr(module, "num_heads", 0), getattr(module, "head_dim", 0)
        if (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and heads >= 1
                and qkv.out_features == 3 * heads * head_dim
                and proj.in_features == heads * head_dim):
            out[qkv] = module
    return out


def fix_heads(model: nn.Module) -> None:
    """After a channel cut: every timm attention's head count and width from its `qkv` (whole
    heads were cut, so its rows are still a multiple of 3 * head_dim)."""
    types = _timm_attention_types()
    for attn in model.modules():
        qkv, head_dim = getattr(attn, "qkv", None), getattr(attn, "head_dim", 0)
        if type(attn) in types and isinstance(qkv, nn.Linear) and head_dim:
            attn.num_heads = qkv.out_features // (3 * head_dim)
            if hasattr(attn, "attn_dim"):
                attn.attn_dim = attn.num_heads * head_dim


def mha_modules(model: nn.Module) -> dict[str, nn.MultiheadAttention]:
    """{name: module} of every `nn.MultiheadAttention` whose heads can be pruned: q, k and v
    projections packed in `in_proj_weight`, more than one head."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim
            and m.num_heads > 1 and m.in_proj_weight is not None}


@torch.no_grad()
def packed_head_scores(qkv_weight: torch.Tensor, out_weight: torch.Tensor, heads: int
                       ) -> torch.Tensor:
    """(heads,) L2 norm of each head's q, k, v rows of a packed (3 * heads * head_dim, dim)
    in-projection and its columns of the (dim, heads * head_dim) output projection: the
    magnitude criterion by whole heads."""
    w = qkv_weight.detach().float()
    inner = w.shape[0] // 3
    rows = w.view(3, heads, inner // heads, -1).pow(2).sum(dim=(0, 2, 3))
    cols = out_weight.detach().float().view(-1, heads, inner // heads)
    return (rows + cols.pow(2).sum(dim=(0, 2))).sqrt()


def head_scores(mha: nn.Module) -> torch.Tensor:
    """(num_heads,) `packed_head_scores` of an `nn.MultiheadAttention` (or `HeadsAttention`)."""
    return packed_head_scores(mha.in_proj_weight, mha.out_proj.weight, mha.num_heads)


def cut_heads(scores: torch.Tensor, kept: int) -> list[int]:
    """Indices of the lowest-scored heads beyond `kept` (ties: the earlier head first)."""
    n_cut = len(scores) - kept
    if n_cut <= 0:
        return []
    return sorted(int(i) for i in torch.argsort(scores.cpu(), stable=True)[:n_cut])


def qkv_rows(heads: list[int], head_dim: int, inner: int) -> torch.Tensor:
    """Indices of heads `heads`' rows in a packed (q, k, v) weight of `inner` rows each."""
    per_head = torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)],
                            dtype=torch.long)
    return torch.cat([per_head + k * inner for k in range(3)])


@torch.no_grad()
def zero_mha_heads(mha: nn.MultiheadAttention, cut: list[int]) -> None:
    """Zero, in place, what removing heads `cut` removes: their q, k, v rows (weights and
    biases) and their `out_proj` columns. A head with zero q, k and v outputs zero, so this
    computes exactly what the pruned module does."""
    inner = mha.in_proj_weight.shape[0] // 3
    head_dim = inner // mha.num_heads
    rows = qkv_rows(cut, head_dim, inner)
    mha.in_proj_weight[rows] = 0.0
    if mha.in_proj_bias is not None:
        mha.in_proj_bias[rows] = 0.0
    mha.out_proj.weight[:, rows[: len(rows) // 3]] = 0.0


class HeadsAttention(nn.Module):
    """`nn.MultiheadAttention`'s math (packed in-projection, scaled dot-product attention per
    head, `out_proj`) with fewer heads than its embedding width implies: the inner width is
    `num_heads * head_dim`, the output keeps the embedding width. Built from a (dense or
    channel-pruned) `nn.MultiheadAttention` by `from_mha`; its state dict has the same keys."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool,
                 out_bias: bool, dropout: float, batch_first: bool) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        # which heads of the dense module these are: a (batch * heads, L, S) mask is sliced
        self.kept_heads, self.dense_heads = tuple(range(num_heads)), num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.Module, keep: list[int]) -> HeadsAttention:
        """The heads `keep` (indices) of `mha`, their weights copied."""
        inner = mha.in_proj_weight.shape[0] // 3
        head_dim = inner // mha.num_heads
        new = cls(mha.in_proj_weight.shape[1], len(keep), head_dim,
                  bias=mha.in_proj_bias is not None, out_bias=mha.out_proj.bias is not None,
                  dropout=mha.dropout, batch_first=mha.batch_first)
        new.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        dense = getattr(mha, "dense_heads", mha.num_heads)
        before = getattr(mha, "kept_heads", tuple(range(mha.num_heads)))
        new.kept_heads, new.dense_heads = tuple(before[h] for h in keep), dense
        rows = qkv_rows(keep, head_dim, inner).to(mha.in_proj_weight.device)
        new.in_proj_weight.copy_(mha.in_proj_weight[rows])
        if new.in_proj_bias is not None:
            new.in_proj_bias.copy_(mha.in_proj_bias[rows])
        new.out_proj.weight.copy_(mha.out_proj.weight[:, rows[: len(rows) // 3]])
        if new.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
              like: torch.Tensor) -> torch.Tensor | None:
        """nn.MultiheadAttention's masks (True / -inf: not attended) as one additive mask."""
        masks = []
        for mask, shape in ((attn_mask, None), (key_padding_mask, "kpm")):
            if mask is None:
                continue
            add = (torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
                   if mask.dtype == torch.bool else mask.to(like.dtype))
            if shape == "kpm":
                add = add[:, None, None, :]
            elif add.dim() == 3:  # (batch * dense heads, L, S): the kept heads' masks
                add = add.view(-1, self.dense_heads, *add.shape[1:])[:, list(self.kept_heads)]
            masks.append(add)
        return None if not masks else masks[0] if len(masks) == 1 else masks[0] + masks[1]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(inner)
        wq, wk, wv = w.split(inner)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        batch = q.shape[0]
        q, k, v = (t.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in (q, k, v))
        mask = self._mask(attn_mask, key_padding_mask, q)
        drop = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
                scores = scores.masked_fill(~causal.tril(), float("-inf"))
            weights = F.dropout(scores.softmax(-1), drop, self.training)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, -1, inner))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def replace_mha_heads(model: nn.Module, cuts: dict[str, list[int]]) -> None:
    """Replace each `nn.MultiheadAttention` named in `cuts` by a `HeadsAttention` without the
    heads listed, in place."""
    for name, cut in cuts.items():
        if not cut:
            continue
        mha = model.get_submodule(name)
        keep = [h for h in range(mha.num_heads) if h not in set(cut)]
        model.set_submodule(name, HeadsAttention.from_mha(mha, keep))
