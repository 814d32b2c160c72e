"""Writing quantized weights: compressed-tensors' pack-quantized format, or the rounded weights in a dense checkpoint.

compressed-tensors (the format llm-compressor writes, loaded by transformers with `compressed-tensors`
installed and by vLLM) stores each quantized linear layer as int32-packed integer codes (`weight_packed`),
one scale per group (`weight_scale`) and the shape. Only `nn.Linear` layers can be quantized in it, so GPT-2
(whose layers are `Conv1D`) is written `dequantized`: a stock checkpoint whose weights lie on the integer grid.
"""

from __future__ import annotations

import re

import torch
from torch import nn

EXTRA = "compfair[quant]"


def compressed_tensors_available() -> bool:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        return False
    return True


def require_compressed_tensors() -> None:
    if not compressed_tensors_available():
        raise SystemExit(f"error: format compressed-tensors needs the compressed-tensors package: "
                         f"pip install '{EXTRA}' (or pass --format dequantized)")


def supports_compressed_tensors(modules: dict[str, nn.Module]) -> bool:
    return all(isinstance(m, nn.Linear) for m in modules.values())


def _block_suffix(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj': the part after the block index."""
    parts = name.split(".")
    index = max(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[index + 1:])


def save_compressed_tensors(model: nn.Module, out_dir, dequantized: dict[str, torch.Tensor],
                            scales: dict[str, torch.Tensor], bits: int, group_size: int | None, dtype) -> None:
    """Save `model` with the named linear layers in pack-quantized form.

    `dequantized[name]` is the layer's weight on the grid (float32, [out, in]) and `scales[name]` its scales
    [out, groups]; compressed-tensors divides one by the other again, so the codes it packs are exactly ours.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                               strategy="group" if group_size else "channel", group_size=group_size)
    # Targets by the layers' names inside a block, not by class with an ignore list: some models' top-level
    # modules are renamed between saving and loading (GPT-NeoX's embed_out / lm_head), block layers are not.
    suffixes = sorted({_block_suffix(name) for name in dequantized})
    target = "re:.*\\.(" + "|".join(re.escape(s) for s in suffixes) + ")$"
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=[target], weights=weights)},
                                format="pack-quantized")
    apply_quantization_config(model, config)
    for name, weight in dequantized.items():
        module = model.get_submodule(name)
        module.weight.data = weight.float()  # float32 so that weight / scale gives back the exact codes
        module.weight_scale.data = scales[name].to(dtype).reshape(module.weight_scale.shape)
        module.weight_zero_point.data.zero_()
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))


def theoretical_linear_bytes(shapes: dict[str, tuple[int, int]], bits: int, group_size: int | None,
                             scale_bytes: int, packed: bool) -> int:
    """Codes at `bits` per weight plus one scale per group (and the 2 x int64 shape compressed-tensors stores);
    for a dequantized checkpoint, the dense weights at `scale_bytes` each."""
    total = 0
    for out_features, in_features in shapes.values():
        if not packed:
            total += out_features * in_features * scale_bytes
            continue
        groups = in_features // group_size if group_size else 1
        total += out_features * in_features * bits // 8 + out_features * groups * scale_bytes + 2 * 8
    return total
