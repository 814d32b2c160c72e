"""What a calibration-based compression method needs to know about an architecture, in one place.

Post-training quantization (GPTQ, AWQ) and sparsity (Wanda, SparseGPT) all work the same way: run the
calibration text up to the first decoder block, then for each block in turn capture the inputs of its linear
layers, compress those layers, and run the compressed block to get the next block's inputs. The
architecture-specific parts are here:

- which linear layers a block has (`LayerSpec.linears`), and for AWQ which operation feeds each group of
  them, so an input-channel scale can be folded into it (`LayerSpec.scale_groups`);
- how a linear layer's weight reads as `[out_features, in_features]` (GPT-2's `Conv1D` stores it transposed);
- how to capture the first block's inputs and run one block on them (`capture_block_inputs`, `run_block`).

Another architecture is one more `LAYER_SPECS` entry; the block stack itself comes from `blocks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compress.models.blocks import UnsupportedArchitecture, decoder_blocks


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers that read the same input, and the module whose output is that input.

    `kind` says how a per-input-channel scale s folds into the producer so that producer(x) / s is computed
    exactly: `norm` (a LayerNorm/RMSNorm: divide its weight and bias), `norm_plus_one` (Gemma's RMSNorm, which
    multiplies by 1 + weight), `linear` (a linear layer: divide its output rows), `qkv_v` (a fused q/k/v
    projection: divide only the value third of its outputs), `gate_up` (Phi-3's fused gate/up projection:
    divide only the up half, which multiplies the activated gate). A fold whose widths do not match (grouped-
    query attention) is skipped at run time.
    """

    producer: str
    consumers: tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class LayerSpec:
    linears: tuple[str, ...]  # names inside one block, in forward order
    scale_groups: tuple[ScaleGroup, ...] = field(default_factory=tuple)


_LLAMA_LIKE = LayerSpec(
    linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    scale_groups=(
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm"),
        # v_proj -> o_proj folds only without grouped-query attention (equal widths); checked at run time.
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "linear"),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "norm"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "linear"),
    ),
)

_GEMMA = LayerSpec(
    linears=_LLAMA_LIKE.linears,
    scale_groups=(
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm_plus_one"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "linear"),
        ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "norm_plus_one"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "linear"),
    ),
)

LAYER_SPECS: dict[str, LayerSpec] = {
    "gpt2": LayerSpec(
        linears=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        scale_groups=(
            ScaleGroup("ln_1", ("attn.c_attn",), "norm"),
            ScaleGroup("attn.c_attn", ("attn.c_proj",), "qkv_v"),
            ScaleGroup("ln_2", ("mlp.c_fc",), "norm"),
            # mlp.c_proj reads GELU(c_fc(x)): no exact fold, so AWQ leaves it to round-to-nearest.
        ),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "phi3": LayerSpec(
        linears=("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
        scale_groups=(
            ScaleGroup("input_layernorm", ("self_attn.qkv_proj",), "norm"),
            ScaleGroup("self_attn.qkv_proj", ("self_attn.o_proj",), "qkv_v"),
            ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",), "norm"),
            ScaleGroup("mlp.gate_up_proj", ("mlp.down_proj",), "gate_up"),
        ),
    ),
    "gpt_neox": LayerSpec(
        # query_key_value interleaves q, k, v per head, so its value rows are not one slice: no v -> dense fold
        linears=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        scale_groups=(
            ScaleGroup("input_layernorm", ("attention.query_key_value",), "norm"),
            ScaleGroup("post_attention_layernorm", ("mlp.dense_h_to_4h",), "norm"),
        ),
    ),
    "opt": LayerSpec(
        linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
        scale_groups=(
            ScaleGroup("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm"),
            ScaleGroup("self_attn.v_proj", ("self_attn.out_proj",), "linear"),
            ScaleGroup("final_layer_norm", ("fc1",), "norm"),
        ),
    ),
}

# How many of a producer's outputs a fold divides, as a multiple of the consumer's input width.
FOLD_WIDTH = {"linear": 1, "qkv_v": 3, "gate_up": 2}


def layer_spec(config) -> LayerSpec:
    """The spec of a model type; one-line error for one that calibration-based methods do not support."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYER_SPECS:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported by quantization/sparsity "
            f"(supported: {', '.join(sorted(LAYER_SPECS))})")
    spec = LAYER_SPECS[model_type]
    if model_type == "opt" and not getattr(config, "do_layer_norm_before", True):  # OPT-350m: norms come after
        spec = LayerSpec(spec.linears, tuple(g for g in spec.scale_groups if g.kind != "norm"))
    return spec


def block_linears(model: nn.Module, block: nn.Module) -> dict[str, nn.Module]:
    spec = layer_spec(model.config)
    return {name: block.get_submodule(name) for name in spec.linears}


def is_transposed(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as [in_features, out_features]."""
    return type(module).__name__ == "Conv1D"


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """A float32 copy of the weight as [out_features, in_features]."""
    w = module.weight.detach()
    return (w.t() if is_transposed(module) else w).float().clone()


def set_weight_out_in(module: nn.Module, w: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_((w.t() if is_transposed(module) else w).to(module.weight.dtype))


def out_in_features(module: nn.Module) -> tuple[int, int]:
    rows, cols = module.weight.shape
    return (cols, rows) if is_transposed(module) else (rows, cols)


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict]]:
    """For each batch of input ids, the hidden states and keyword arguments the first block receives.

    The model runs up to the first block (embeddings, position encodings, masks as the model builds them)
    and stops there, so nothing of the architecture's preamble is re-implemented here.
    """
    first = decoder_blocks(model)[0]
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        rest = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "layer_past")}
        rest["use_cache"] = False
        captured.append((hidden, rest))
        raise _Captured

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    """The block's outputs on each captured input, paired with the same keyword arguments (next block's inputs)."""
    outputs = []
    for hidden, kwargs in inputs:
        out = block(hidden, **kwargs)
        outputs.append((out[0] if isinstance(out, tuple) else out, kwargs))
    return outputs


def compress_block_by_block(model: nn.Module, batches: list[torch.Tensor], compress_block, *,
                            keep_inputs: bool = False, hessian: bool = True, progress=None) -> None:
    """Run `compress_block(index, block, linears, stats)` on every decoder block, in order.

    `stats[name]` (`compress.common.calibration.InputStatistics`) holds what linear layer `name` saw when
    the calibration text went through the blocks below *as already compressed*, as the reference GPTQ,
    SparseGPT and Wanda implementations do; the compressed block's outputs then feed the next block.
    """
    from compress.common.calibration import record_inputs

    model.eval()
    inputs = capture_block_inputs(model, batches)
    for index, block in enumerate(decoder_blocks(model)):
        linears = block_linears(model, block)
        widths = {name: out_in_features(module)[1] for name, module in linears.items()}
        with record_inputs(linears, widths, keep_inputs=keep_inputs, hessian=hessian) as stats:
            run_block(block, inputs)
        compress_block(index, block, linears, stats)
        del stats
        inputs = run_block(block, inputs)
        if progress is not None:
            progress(index)
