"""Where a decoder-only model keeps its stack of blocks, for every architecture compfair supports.

Compression methods that work block by block (layer dropping, sparsity, calibration-based quantization)
need only this: the `nn.ModuleList` of decoder blocks and the config field that counts them. What an
architecture's attention looks like inside a block (head layout, projections) is
`compress.models.architectures`' business.
"""

from __future__ import annotations

from torch import nn

# model_type -> attribute path from the causal-LM model to its ModuleList of decoder blocks
BLOCK_PATHS = {
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}


class UnsupportedArchitecture(ValueError):
    pass


def check_block_support(config) -> None:
    """One-line error (ValueError) for a model type whose block stack compfair does not know."""
    model_type = getattr(config, "model_type", None)
    if model_type not in BLOCK_PATHS:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported (supported: {', '.join(sorted(BLOCK_PATHS))})")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order (the same module objects, not copies)."""
    check_block_support(model.config)
    module = model
    for name in BLOCK_PATHS[model.config.model_type].split("."):
        module = getattr(module, name)
    return module


def set_decoder_blocks(model: nn.Module, blocks: nn.ModuleList) -> None:
    """Replace the block stack (e.g. with fewer blocks) in place; the caller updates the config's count."""
    check_block_support(model.config)
    *parents, last = BLOCK_PATHS[model.config.model_type].split(".")
    module = model
    for name in parents:
        module = getattr(module, name)
    setattr(module, last, blocks)


def num_blocks_field(config) -> str:
    """The config field that counts the blocks (`n_layer` for GPT-2, `num_hidden_layers` elsewhere)."""
    return "n_layer" if config.model_type == "gpt2" else "num_hidden_layers"
