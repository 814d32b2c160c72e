"""Which heads to prune each iteration, and removing them for real.

Selection follows Michel et al. (2019): each iteration masks the ceil(fraction x remaining) least
important heads, never a layer's last head (a layer with no head would need a different block).
Removal slices the pruned heads' query/key/value columns out of `attn.c_attn` and their rows out
of `attn.c_proj`: the compact model (`compact_gpt2.CompactGPT2LMHeadModel`) computes exactly what
the masked model computes, with fewer weights. The portable form scatters the kept weights back
into a plain GPT-2 whose pruned heads are zeros, so that anything that reads GPT-2 reads it.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from compress.models.compact_gpt2 import CompactGPT2Config, CompactGPT2LMHeadModel
from compress.pruning.head_gates import attention_blocks


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
    return [torch.nonzero(row, as_tuple=False).flatten().tolist() for row in mask.detach().cpu()]


def _head_columns(heads: list[int], head_dim: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]).to(device)


def _qkv_columns(heads: list[int], head_dim: int, width: int, device) -> torch.Tensor:
    per_part = _head_columns(heads, head_dim, device)
    return torch.cat([per_part + part * width for part in range(3)])  # c_attn holds [q | k | v]


def compact_from_masked(model: GPT2LMHeadModel, mask: torch.Tensor) -> CompactGPT2LMHeadModel:
    """A `CompactGPT2LMHeadModel` holding only the heads `mask` keeps (the model itself is not changed)."""
    keep = kept_heads(mask)
    config_dict = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        config_dict.pop(key, None)
    config = CompactGPT2Config(kept_heads=keep, **config_dict)
    config.architectures = [CompactGPT2LMHeadModel.__name__]
    config._attn_implementation = model.config._attn_implementation
    head_dim = config.n_embd // config.n_head
    state = dict(model.state_dict())
    for layer, heads in enumerate(keep):
        if len(heads) == config.n_head:
            continue
        prefix = f"transformer.h.{layer}.attn."
        device = state[prefix + "c_attn.weight"].device
        qkv = _qkv_columns(heads, head_dim, config.n_embd, device)
        rows = _head_columns(heads, head_dim, device)
        state[prefix + "c_attn.weight"] = state[prefix + "c_attn.weight"][:, qkv]  # Conv1D weight: (in, out)
        state[prefix + "c_attn.bias"] = state[prefix + "c_attn.bias"][qkv]
        state[prefix + "c_proj.weight"] = state[prefix + "c_proj.weight"][rows, :]
    with torch.device("meta"):
        compact = CompactGPT2LMHeadModel(config)
    compact.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    compact.tie_weights()
    _materialize_buffers(compact, model)
    compact.generation_config = model.generation_config
    return compact.train(model.training)


def _materialize_buffers(target, source) -> None:
    """Non-persistent buffers are not in a state dict; copy them from the source model."""
    source_buffers = dict(source.named_buffers())
    for name, buffer in list(target.named_buffers()):
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = target.get_submodule(module_name) if module_name else target
            module.register_buffer(attr, source_buffers[name].clone(), persistent=False)


def portable_from_compact(compact: CompactGPT2LMHeadModel) -> GPT2LMHeadModel:
    """A plain GPT-2 with the compact model's weights and zeros for every pruned head.

    A pruned head's query, key and value weights and biases are zero and so are its rows of
    `c_proj`: its contribution to the residual stream is exactly zero.
    """
    config_dict = compact.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "kept_heads", "transformers_version"):
        config_dict.pop(key, None)
    config = GPT2Config(**config_dict)
    config.architectures = [GPT2LMHeadModel.__name__]
    config._attn_implementation = compact.config._attn_implementation
    head_dim = config.n_embd // config.n_head
    state = dict(compact.state_dict())
    for layer, heads in enumerate(compact.config.kept_heads):
        if len(heads) == config.n_head:
            continue
        prefix = f"transformer.h.{layer}.attn."
        weight, bias, proj = (state[prefix + name] for name in ("c_attn.weight", "c_attn.bias", "c_proj.weight"))
        qkv = _qkv_columns(heads, head_dim, config.n_embd, weight.device)
        rows = _head_columns(heads, head_dim, weight.device)
        full_weight = weight.new_zeros(config.n_embd, 3 * config.n_embd)
        full_weight[:, qkv] = weight
        full_bias = bias.new_zeros(3 * config.n_embd)
        full_bias[qkv] = bias
        full_proj = proj.new_zeros(config.n_embd, config.n_embd)
        full_proj[rows, :] = proj
        state.update({prefix + "c_attn.weight": full_weight, prefix + "c_attn.bias": full_bias,
                      prefix + "c_proj.weight": full_proj})
    with torch.device("meta"):
        portable = GPT2LMHeadModel(config)
    portable.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    portable.tie_weights()
    _materialize_buffers(portable, compact)
    portable.generation_config = compact.generation_config
    return portable.train(compact.training)


def heads_per_layer(model) -> list[int]:
    return [attn.num_heads for attn in attention_blocks(model)]


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
