"""What head pruning needs to know about an architecture's attention, for every family compfair prunes.

For each supported `model_type`: which module of a decoder block is the attention, its output projection
(whose input is the concatenated head outputs, head 0 first), how its query/key/value projections are laid
out, and where the config keeps the number of query heads, of key/value heads and `head_dim`. Gates,
importance, the pruning schedule and the physical removal of heads (compact and portable forms) all work
from this description.

Query/key/value layouts (read from the transformers 5 modeling code of each family):

- `separate`: `q_proj`, `k_proj`, `v_proj` (Linear; output rows head by head); Llama, Mistral, Qwen2 (with
  biases), Qwen3 and Gemma 3 (plus q/k RMSNorms over `head_dim` shared by all heads, which removal leaves
  alone), Gemma 2, OPT (as `out_proj`, with biases).
- `fused`: Phi-3's `qkv_proj` rows are [all query heads | all key heads | all value heads].
- `fused_conv1d`: GPT-2's `c_attn` is a Conv1D (weight stored as (in, out)) whose columns are [q | k | v],
  each `n_embd` wide.
- `interleaved`: GPT-NeoX's `query_key_value` rows are grouped per head: head h owns rows
  [h * 3 * head_dim, (h + 1) * 3 * head_dim), its query, key and value in that order.

Units. With grouped-query attention (fewer key/value heads than query heads), query head h reads key/value
head h // (query heads per KV head) (`repeat_kv`). The natural unit of pruning is then a KV group: one KV
head and the query heads that share it; removing whole groups keeps the ratio the model code assumes, so the
compact form stays exact. `query_head` prunes query heads one by one; inside a group that is only expressible
as zeros (the portable form), because stock code has one ratio for every layer. With as many KV heads as
query heads both units are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.models.blocks import BLOCK_PATHS, decoder_blocks

UNITS = ("kv_group", "query_head")


@dataclass(frozen=True)
class AttentionLayout:
    attention: str  # attribute of a decoder block that holds the attention module
    output: str  # the attention's output projection; its input is the concatenated head outputs
    qkv: str  # "separate" | "fused" | "fused_conv1d" | "interleaved" (see the module docstring)
    projections: tuple[str, ...]  # the query/key/value projection modules, in q, k, v order when separate
    heads_field: str = "num_attention_heads"
    kv_heads_field: str | None = "num_key_value_heads"  # None: as many KV heads as query heads
    head_dim_field: str | None = "head_dim"  # None: hidden_size / heads
    note: str = ""


_SEPARATE = ("q_proj", "k_proj", "v_proj")

LAYOUTS: dict[str, AttentionLayout] = {
    "gpt2": AttentionLayout("attn", "c_proj", "fused_conv1d", ("c_attn",), "n_head", None, None,
                            "Conv1D c_attn = [q | k | v]"),
    "llama": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE, note="GQA"),
    "mistral": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE, note="GQA, sliding window"),
    "qwen2": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE, note="GQA, q/k/v biases"),
    "qwen3": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE,
                             note="GQA, per-head q/k RMSNorm over head_dim (shared by heads)"),
    "gemma2": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE,
                              note="GQA, head_dim set apart from hidden_size, logit softcapping"),
    "gemma3_text": AttentionLayout("self_attn", "o_proj", "separate", _SEPARATE,
                                   note="GQA, separate head_dim, per-head q/k RMSNorm"),
    "phi3": AttentionLayout("self_attn", "o_proj", "fused", ("qkv_proj",), note="fused qkv_proj = [q | k | v]"),
    "gpt_neox": AttentionLayout("attention", "dense", "interleaved", ("query_key_value",), kv_heads_field=None,
                                head_dim_field=None, note="query_key_value interleaved per head"),
    "opt": AttentionLayout("self_attn", "out_proj", "separate", _SEPARATE, kv_heads_field=None, head_dim_field=None,
                           note="biases on every projection"),
}

# Families whose attention cannot be pruned head by head exactly, and why (checked before anything else).
_WHOLE_PROJECTION_NORM = ("its q_norm/k_norm are RMSNorms over all heads of the projection at once, so removing a "
                          "head would change the kept heads' outputs")
REFUSED = {"olmo2": _WHOLE_PROJECTION_NORM, "olmo3": _WHOLE_PROJECTION_NORM, "olmoe": _WHOLE_PROJECTION_NORM}

assert set(LAYOUTS) == set(BLOCK_PATHS), "blocks.py and attention.py must describe the same families"


class UnsupportedAttention(ValueError):
    pass


def layout_of(config) -> AttentionLayout:
    """The family's layout, or a one-line `UnsupportedAttention` naming the model type and why."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise UnsupportedAttention(f"head pruning of model type {model_type!r} is refused: {REFUSED[model_type]}")
    if model_type not in LAYOUTS:
        raise UnsupportedAttention(f"head pruning of model type {model_type!r} is not supported yet (supported: "
                                   f"{', '.join(sorted(LAYOUTS))})")
    return LAYOUTS[model_type]


@dataclass(frozen=True)
class HeadShape:
    """A model's attention head counts: `num_heads` query heads and `num_kv_heads` KV heads of `head_dim`."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    def units_per_layer(self, unit: str) -> int:
        return self.num_kv_heads if unit == "kv_group" else self.num_heads

    def query_heads_of_unit(self, unit: str, index: int) -> list[int]:
        if unit == "query_head":
            return [index]
        return list(range(index * self.group_size, (index + 1) * self.group_size))

    def kv_head_of(self, query_head: int) -> int:
        return query_head // self.group_size


def head_shape(config) -> HeadShape:
    layout = layout_of(config)
    heads = int(getattr(config, layout.heads_field))
    kv_heads = getattr(config, layout.kv_heads_field, None) if layout.kv_heads_field else None
    kv_heads = int(kv_heads or heads)
    hidden = int(config.hidden_size)
    head_dim = getattr(config, layout.head_dim_field, None) if layout.head_dim_field else None
    head_dim = int(head_dim or hidden // heads)
    layers = int(config.num_hidden_layers)
    if heads % kv_heads:
        raise UnsupportedAttention(f"{config.model_type}: {heads} query heads do not split into {kv_heads} KV groups")
    return HeadShape(layers, heads, kv_heads, head_dim, hidden)


def check_unit(config, unit: str) -> str:
    """`unit` if the family allows it (any unit for multi-head attention, both for GQA); else a one-line error."""
    if unit not in UNITS:
        raise UnsupportedAttention(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    head_shape(config)  # validates the family
    return unit


def compact_possible(config, unit: str) -> bool:
    """Whether heads pruned in `unit`s can be sliced out for real: with whole KV groups, or without GQA."""
    shape = head_shape(config)
    return unit == "kv_group" or shape.group_size == 1


def attention_modules(model: nn.Module) -> list[nn.Module]:
    layout = layout_of(model.config)
    return [getattr(block, layout.attention) for block in decoder_blocks(model)]


def output_projections(model: nn.Module) -> list[nn.Module]:
    """The attention output projection of every block, in layer order."""
    layout = layout_of(model.config)
    return [getattr(attn, layout.output) for attn in attention_modules(model)]


# ---- which weights belong to which heads ----

def _rows(heads: list[int], width: int, offset: int = 0) -> torch.Tensor:
    """Indices of the `width`-long slices of `heads` (head h owns [offset + h*width, offset + (h+1)*width))."""
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(offset + h * width, offset + (h + 1) * width) for h in heads])


def head_slices(config, query_heads: list[int], kv_heads: list[int]) -> dict[str, tuple[int, torch.Tensor]]:
    """For one block's attention: parameter name (relative to the attention module) -> (dim, indices) of the
    slices that belong to `query_heads` and `kv_heads`. Slicing every listed parameter to these indices
    keeps exactly those heads; everything else in the block is shared by all heads."""
    layout = layout_of(config)
    shape = head_shape(config)
    d = shape.head_dim
    q, kv = _rows(query_heads, d), _rows(kv_heads, d)
    out_cols = q
    slices: dict[str, tuple[int, torch.Tensor]] = {}
    if layout.qkv == "separate":
        for name, index in zip(layout.projections, (q, kv, kv)):
            slices[f"{name}.weight"] = (0, index)
            slices[f"{name}.bias"] = (0, index)
    elif layout.qkv == "fused":
        q_width, kv_width = shape.num_heads * d, shape.num_kv_heads * d
        index = torch.cat([q, _rows(kv_heads, d, q_width), _rows(kv_heads, d, q_width + kv_width)])
        slices[f"{layout.projections[0]}.weight"] = (0, index)
        slices[f"{layout.projections[0]}.bias"] = (0, index)
    elif layout.qkv == "fused_conv1d":  # GPT-2 Conv1D: weight (in, out), columns [q | k | v], MHA only
        width = shape.num_heads * d
        index = torch.cat([q, q + width, q + 2 * width])
        slices[f"{layout.projections[0]}.weight"] = (1, index)
        slices[f"{layout.projections[0]}.bias"] = (0, index)
    elif layout.qkv == "interleaved":  # GPT-NeoX: head h owns 3*d consecutive rows (q, k, v), MHA only
        index = _rows(query_heads, 3 * d)
        slices[f"{layout.projections[0]}.weight"] = (0, index)
        slices[f"{layout.projections[0]}.bias"] = (0, index)
    else:  # pragma: no cover - a layout typo
        raise AssertionError(layout.qkv)
    out_dim = 0 if layout.qkv == "fused_conv1d" else 1  # Conv1D stores (in, out); Linear (out, in)
    slices[f"{layout.output}.weight"] = (out_dim, out_cols)
    return slices


def output_input_columns(config, query_heads: list[int]) -> tuple[int, torch.Tensor]:
    """(dim, indices) of the output projection's weight that multiply `query_heads`' outputs."""
    layout = layout_of(config)
    shape = head_shape(config)
    return (0 if layout.qkv == "fused_conv1d" else 1), _rows(query_heads, shape.head_dim)


def kept_kv_heads(config, query_heads: list[int]) -> list[int]:
    """The KV heads some kept query head still reads."""
    shape = head_shape(config)
    return sorted({shape.kv_head_of(h) for h in query_heads})


def zero_pruned_heads(model: nn.Module, kept_query_heads: list[list[int]]) -> None:
    """In place: zero every weight and bias of the heads not kept (a KV head only once no query head reads it).

    The result is the portable form: the stock architecture whose pruned heads contribute exactly nothing.
    """
    config = model.config
    shape = head_shape(config)
    with torch.no_grad():
        for attn, heads in zip(attention_modules(model), kept_query_heads):
            kept_kv = kept_kv_heads(config, heads)
            pruned_q = sorted(set(range(shape.num_heads)) - set(heads))
            pruned_kv = sorted(set(range(shape.num_kv_heads)) - set(kept_kv))
            if not pruned_q:
                continue
            for name, (dim, index) in head_slices(config, pruned_q, pruned_kv).items():
                parameter = _parameter(attn, name)
                if parameter is not None:
                    parameter.index_fill_(dim, index.to(parameter.device), 0)


def _parameter(module: nn.Module, name: str):
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner), attr, None)
