"""Which heads to prune each iteration, and removing them for real.

Selection follows Michel et al. (2019): each iteration masks the ceil(fraction x remaining) least
important units (query heads or KV groups, `compress.models.attention`), never a layer's last one (a
layer with no head would need a different block). Removal slices the pruned heads' rows and columns
out of the attention projections, as `attention.head_slices` lists them for the family: the compact
model (`compact_gpt2` for GPT-2, `compact_models` for the others) computes exactly what the masked
model computes, with fewer weights. The portable form scatters the kept weights back into the stock
architecture whose pruned heads are zeros, so that anything that reads the stock model reads it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from compress.models.attention import (
    compact_possible,
    head_shape,
    head_slices,
    kept_kv_heads,
    layout_of,
    zero_pruned_heads,
)
from compress.models.blocks import BLOCK_PATHS
from compress.models.compact_gpt2 import CompactGPT2Config, CompactGPT2LMHeadModel
from compress.models.compact_models import COMPACT_CLASSES


def heads_to_prune(remaining: int, fraction: float, target_heads: int | None = None) -> int:
    """ceil(fraction x remaining), but never below `target_heads`.

    Rounding first keeps float noise from adding a head (0.05 * 140 is 7.000000000000001).
    """
    count = math.ceil(round(fraction * remaining, 6))
    if target_heads is not None:
        count = min(count, remaining - target_heads)
    return max(count, 0)


def select_heads_to_prune(importance: torch.Tensor, mask: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """The `count` least important unmasked heads, as (layer, head), keeping one head in every layer.

    Ties go to the lower (layer, head) index so every process picks the same heads.
    """
    alive = mask.detach().cpu().bool()
    scores = importance.detach().cpu().float().masked_fill(~alive, float("inf")).flatten()
    left_in_layer = alive.sum(dim=1).tolist()
    num_heads = mask.shape[1]
    chosen = []
    for index in torch.sort(scores, stable=True).indices.tolist():
        if len(chosen) == count or scores[index] == float("inf"):
            break
        layer, head = divmod(index, num_heads)
        if left_in_layer[layer] > 1:
            chosen.append((layer, head))
            left_in_layer[layer] -= 1
    return chosen


def kept_heads(mask: torch.Tensor) -> list[list[int]]:
    """Indices of the nonzero entries of each row (units, or query heads, still in play per layer)."""
    return [torch.nonzero(row, as_tuple=False).flatten().tolist() for row in mask.detach().cpu()]


def kept_query_heads(config, mask: torch.Tensor, unit: str = "kv_group") -> list[list[int]]:
    """The query heads a (layers, units) mask keeps, per layer."""
    shape = head_shape(config)
    return [[h for u in units for h in shape.query_heads_of_unit(unit, u)] for units in kept_heads(mask)]


_FORM_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "kept_heads", "kept_kv_heads")


def _config_fields(config) -> dict:
    fields = config.to_dict()
    for key in _FORM_KEYS:
        fields.pop(key, None)
    return fields


def _compact_classes(model_type: str):
    if model_type == "gpt2":
        return CompactGPT2Config, CompactGPT2LMHeadModel
    return COMPACT_CLASSES[model_type]


def _attention_prefix(config, layer: int) -> str:
    return f"{BLOCK_PATHS[config.model_type]}.{layer}.{layout_of(config).attention}."


def _rebuilt(model_class, config, state: dict, source):
    with torch.device("meta"):
        rebuilt = model_class(config)
    rebuilt.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True, strict=True)
    rebuilt.tie_weights()
    _materialize_buffers(rebuilt, source)
    rebuilt.generation_config = source.generation_config
    return rebuilt.train(source.training)


def compact_from_masked(model, mask: torch.Tensor, unit: str = "kv_group"):
    """The compact form holding only the units `mask` (layers, units) keeps; the model itself is not changed.

    GPT-2 becomes a `CompactGPT2LMHeadModel`, every other family its `compact_models` class. Query heads
    pruned inside a KV group (`unit="query_head"` on a GQA model) cannot be sliced out: a one-line error.
    """
    config = model.config
    if not compact_possible(config, unit):
        raise ValueError(f"{config.model_type}: query heads pruned inside KV groups have no compact form (the "
                         "stock attention code has one query-to-KV ratio for every layer); save the portable form")
    keep = kept_query_heads(config, mask, unit)
    keep_kv = [kept_kv_heads(config, heads) for heads in keep]
    config_class, model_class = _compact_classes(config.model_type)
    extra = {} if config.model_type == "gpt2" else {"kept_kv_heads": keep_kv}
    compact_config = config_class(kept_heads=keep, **extra, **_config_fields(config))
    compact_config.architectures = [model_class.__name__]
    compact_config._attn_implementation = config._attn_implementation
    shape = head_shape(config)
    state = dict(model.state_dict())
    for layer, (heads, kv) in enumerate(zip(keep, keep_kv)):
        if len(heads) == shape.num_heads:
            continue
        prefix = _attention_prefix(config, layer)
        for name, (dim, index) in head_slices(config, heads, kv).items():
            if prefix + name in state:
                tensor = state[prefix + name]
                state[prefix + name] = tensor.index_select(dim, index.to(tensor.device))
    return _rebuilt(model_class, compact_config, state, model)


def _materialize_buffers(target, source) -> None:
    """Non-persistent buffers are not in a state dict; copy them from the source model."""
    source_buffers = dict(source.named_buffers())
    for name, buffer in list(target.named_buffers()):
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = target.get_submodule(module_name) if module_name else target
            module.register_buffer(attr, source_buffers[name].clone(), persistent=False)


def stock_model_type(config) -> str:
    """The stock family of a compact config (`compact_llama` -> `llama`), or the model type itself."""
    model_type = config.model_type
    return model_type[len("compact_"):] if model_type.startswith("compact_") else model_type


def portable_from_compact(compact):
    """The stock architecture with the compact model's weights and zeros for every pruned head.

    A pruned head's query, key and value weights and biases are zero (a KV head once no kept query head
    reads it) and so are its columns of the output projection: its contribution is exactly zero.
    """
    family = stock_model_type(compact.config)
    config = AutoConfig.for_model(family, **_config_fields(compact.config))
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    config.architectures = [model_class.__name__]
    config._attn_implementation = compact.config._attn_implementation
    with torch.device("meta"):
        full_shapes = {k: v.shape for k, v in model_class(config).state_dict().items()}
    shape = head_shape(config)
    state = dict(compact.state_dict())
    kept_kv = getattr(compact.config, "kept_kv_heads", None) or compact.config.kept_heads
    for layer, (heads, kv) in enumerate(zip(compact.config.kept_heads, kept_kv)):
        if len(heads) == shape.num_heads:
            continue
        prefix = _attention_prefix(config, layer)
        for name, (dim, index) in head_slices(config, heads, kv).items():
            if prefix + name not in state:
                continue
            tensor = state[prefix + name]
            full = tensor.new_zeros(full_shapes[prefix + name])
            state[prefix + name] = full.index_copy_(dim, index.to(tensor.device), tensor)
    return _rebuilt(model_class, config, state, compact)


def portable_from_masked(model, mask: torch.Tensor, unit: str = "kv_group"):
    """A copy of the stock model whose pruned units' weights are zero (works for every unit)."""
    portable = copy.deepcopy(model)
    zero_pruned_heads(portable, kept_query_heads(model.config, mask, unit))
    return portable


def heads_per_layer(model) -> list[int]:
    """Query heads each layer computes (compact models: the kept ones; stock models: all, zeros included)."""
    config = model.config
    if hasattr(config, "kept_heads"):
        return [len(heads) for heads in config.kept_heads]
    shape = head_shape(config)
    return [shape.num_heads] * shape.num_layers


def forward_flops(model, input_ids: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(input_ids=input_ids)
    return counter.get_total_flops()


def forward_seconds(models: list, input_ids: torch.Tensor, repeats: int = 5) -> list[float]:
    """Median wall time of a no-grad forward pass of each model, the models taking turns so that
    background load on the machine hits them alike (one warm-up pass each first)."""
    def sync():
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize(input_ids.device)

    times = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model(input_ids=input_ids)
        for _ in range(repeats):
            for model, model_times in zip(models, times):
                sync()
                start = time.perf_counter()
                model(input_ids=input_ids)
                sync()
                model_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
