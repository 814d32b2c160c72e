"""Remove decoder blocks from a causal LM, leaving a stock-architecture model with fewer blocks.

What must change besides the block list, so that the smaller model is what a config of its size builds
(and so that it loads anywhere, without compfair):

- the config's block count (`n_layer` / `num_hidden_layers`);
- per-layer config lists: `layer_types` (full vs sliding-window attention in Qwen2/3, Gemma 2/3, ...) keeps the
  kept blocks' entries, in order; Qwen's `max_window_layers` (the first blocks that use full attention) becomes
  the number of kept blocks below it;
- every `layer_idx` attribute inside a block (attention modules use it to find their slot in the KV cache, which
  is built with one slot per block of the config).

A block whose computation depends on its position in the stack cannot be renumbered without changing what it
computes; GPT-2 with `scale_attn_by_inverse_layer_idx` is such a model, and it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from compress.models.blocks import decoder_blocks, num_blocks_field, set_decoder_blocks

# Config lists with one entry per block, in block order.
PER_BLOCK_CONFIG_LISTS = ("layer_types",)


def check_blocks_to_remove(config, blocks: Iterable[int]) -> list[int]:
    """The sorted block indices, or a one-line ValueError: each in range, no repeats, at least one block kept."""
    count = getattr(config, num_blocks_field(config))
    chosen = list(blocks)
    if not chosen:
        raise ValueError("no block to remove: give at least one block index")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"blocks to remove repeat an index: {chosen}")
    if len(chosen) >= count:
        raise ValueError(f"cannot remove {len(chosen)} of {count} blocks: at least one must be kept")
    outside = [b for b in chosen if not isinstance(b, int) or not 0 <= b < count]
    if outside:
        raise ValueError(f"block indices {outside} are outside 0..{count - 1} ({count} blocks)")
    if config.model_type == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx=True scales attention by each block's depth; "
                         "its blocks cannot be dropped without changing what the kept ones compute")
    return sorted(chosen)


def updated_config_fields(config, kept: list[int]) -> dict:
    """{field: new value} for every config field that counts or lists blocks."""
    updates = {num_blocks_field(config): len(kept)}
    for name in PER_BLOCK_CONFIG_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            updates[name] = [value[i] for i in kept]
    max_window_layers = getattr(config, "max_window_layers", None)
    if isinstance(max_window_layers, int):
        updates["max_window_layers"] = sum(1 for i in kept if i < max_window_layers)
    return updates


def renumber_layer_indices(block: nn.Module, new_index: int) -> list[str]:
    """Set every integer `layer_idx` inside `block` to `new_index`; the names of the modules changed."""
    changed = []
    for name, module in block.named_modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = new_index
            changed.append(name or type(module).__name__)
    return changed


def drop_blocks(model: nn.Module, blocks: Iterable[int]) -> dict:
    """Remove `blocks` (indices into the model's block stack) in place; returns the config fields changed.

    The kept blocks are the same module objects, renumbered 0..n-1 in their original order.
    """
    config = model.config
    removed = check_blocks_to_remove(config, blocks)
    old = decoder_blocks(model)
    kept = [i for i in range(len(old)) if i not in set(removed)]
    updates = updated_config_fields(config, kept)
    new_blocks = nn.ModuleList([old[i] for i in kept])
    for new_index, block in enumerate(new_blocks):
        renumber_layer_indices(block, new_index)
    set_decoder_blocks(model, new_blocks)
    for name, value in updates.items():
        setattr(config, name, value)
    return updates
