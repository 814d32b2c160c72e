"""Quantize a causal LM's decoder-block linear layers and save the result with quantization.json.

Embeddings, norms and the output head stay in the model's dtype, as in GPTQ/AWQ and llm-compressor's schemes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from compress.common.calibration import CalibrationData, batches_of, calibration_blocks
from compress.common.checkpoint_files import building_folder
from compress.common.post_training import (
    load_config,
    load_model_and_tokenizer,
    size_record,
    version_of,
    write_record,
)
from compress.models.blocks import decoder_blocks
from compress.models.layerwise import (
    FOLD_WIDTH,
    block_linears,
    compress_block_by_block,
    layer_spec,
    out_in_features,
    set_weight_out_in,
    weight_out_in,
)
from compress.quantization import checkpoint
from compress.quantization.config import QuantizeConfig
from compress.quantization.grid import Grid, check_group_size, round_to_nearest
from compress.quantization.methods import awq_search, gptq_quantize

RECORD_FILE = "quantization.json"
ALGORITHMS = {"int8": "round-to-nearest", "int4": "round-to-nearest", "gptq": "GPTQ", "awq": "AWQ"}


def _prefix(model) -> str:
    blocks = decoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


def all_linears(model) -> dict[str, torch.nn.Module]:
    prefix = _prefix(model)
    return {f"{prefix}.{i}.{name}": module for i, block in enumerate(decoder_blocks(model))
            for name, module in block_linears(model, block).items()}


def _fold_into_producer(block, group, s: torch.Tensor) -> None:
    producer = block.get_submodule(group.producer)
    with torch.no_grad():
        if group.kind == "norm":
            producer.weight.div_(s.to(producer.weight.dtype))
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s.to(producer.bias.dtype))
            return
        if group.kind == "norm_plus_one":  # y = norm(x) * (1 + w): 1 + w' = (1 + w) / s
            producer.weight.copy_(((1 + producer.weight.float()) / s - 1).to(producer.weight.dtype))
            return
        w = weight_out_in(producer)
        rows = slice(w.shape[0] - s.numel(), w.shape[0])  # the value third, the up half, or every row
        w[rows] /= s.unsqueeze(1)
        set_weight_out_in(producer, w)
        if getattr(producer, "bias", None) is not None:
            producer.bias[rows] /= s.to(producer.bias.dtype)


def apply_awq_scales(model, block, linears, stats, grid: Grid) -> list[dict]:
    """Search and fold AWQ scales for every group whose producer can absorb them exactly; returns what was done."""
    done = []
    for group in layer_spec(model.config).scale_groups:
        consumers = [linears[name] for name in group.consumers]
        width = out_in_features(consumers[0])[1]
        if group.kind in FOLD_WIDTH and (out_in_features(block.get_submodule(group.producer))[0]
                                          != FOLD_WIDTH[group.kind] * width):
            done.append({"producer": group.producer, "skipped": "widths differ (grouped-query attention)"})
            continue
        first = stats[group.consumers[0]]
        s, alpha, relative = awq_search([weight_out_in(m) for m in consumers], first.stacked_inputs(),
                                        first.mean_abs(), grid)
        for module in consumers:
            set_weight_out_in(module, weight_out_in(module) * s.unsqueeze(0))
        _fold_into_producer(block, group, s)
        done.append({"producer": group.producer, "consumers": list(group.consumers), "alpha": alpha,
                     "error_vs_round_to_nearest": relative})
    return done


def quantize_model(model, config: QuantizeConfig, blocks: torch.Tensor | None, scale_dtype) -> tuple[dict, dict, list]:
    """Quantize in place (weights set to grid values); returns ({layer: dequantized}, {layer: scales}, AWQ log)."""
    grid = Grid(config.bits, config.groups, scale_dtype)
    prefix = _prefix(model)
    dequantized, scales, awq_log = {}, {}, []

    def quantize_linears(index, linears, stats):
        for name, module in linears.items():
            w = weight_out_in(module)
            if config.method == "gptq":
                q, s = gptq_quantize(w, stats[name].hessian(), grid, config.blocksize, config.percdamp)
            else:
                q, s = round_to_nearest(w, grid)
            set_weight_out_in(module, q)
            dequantized[f"{prefix}.{index}.{name}"], scales[f"{prefix}.{index}.{name}"] = q, s

    if blocks is None:
        for index, block in enumerate(decoder_blocks(model)):
            quantize_linears(index, block_linears(model, block), None)
        return dequantized, scales, awq_log

    def compress_block(index, block, linears, stats):
        if config.method == "awq":
            awq_log.append({"block": index, "groups": apply_awq_scales(model, block, linears, stats, grid)})
        quantize_linears(index, linears, stats)

    compress_block_by_block(model, batches_of(blocks, config.calibration_batch_size), compress_block,
                            keep_inputs=config.method == "awq", hessian=config.method == "gptq")
    return dequantized, scales, awq_log


def run(config: QuantizeConfig, data: CalibrationData) -> dict | None:
    out_dir = Path(config.output_dir)
    if (out_dir / RECORD_FILE).is_file():
        print(f"{out_dir / RECORD_FILE} exists: this run is complete (delete it to quantize again)")
        return None
    layer_spec(load_config(config.model_name_or_path))  # before any weights are read
    if config.needs_calibration and not data.has_data:
        raise SystemExit(f"error: method {config.method} needs calibration text: set train_file or dataset_name")
    model, tokenizer = load_model_and_tokenizer(config.model_name_or_path, config.dtype)
    linears = all_linears(model)
    for name, module in linears.items():
        check_group_size(Grid(config.bits, config.groups), out_in_features(module)[1], name)
    fmt = config.format
    if fmt == "auto":
        fmt = ("compressed-tensors" if checkpoint.supports_compressed_tensors(linears)
               and checkpoint.compressed_tensors_available() else "dequantized")
    if fmt == "compressed-tensors":
        if not checkpoint.supports_compressed_tensors(linears):
            raise SystemExit(f"error: format compressed-tensors quantizes only nn.Linear layers; "
                             f"{model.config.model_type}'s are {type(next(iter(linears.values()))).__name__}; "
                             "pass --format dequantized")
        checkpoint.require_compressed_tensors()
    dtype = model.dtype
    shapes = {name: out_in_features(module) for name, module in linears.items()}
    blocks = calibration_blocks(data, tokenizer, config.num_samples, config.seed) if config.needs_calibration else None
    started = time.monotonic()
    with torch.no_grad():
        dequantized, scales, awq_log = quantize_model(model, config, blocks, dtype)
    seconds = time.monotonic() - started
    element = torch.empty((), dtype=dtype).element_size()
    with building_folder(out_dir) as building:
        if fmt == "compressed-tensors":
            checkpoint.save_compressed_tensors(model, building, dequantized, scales, config.bits, config.groups, dtype)
        else:
            model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        parameters = sum(out * inp for out, inp in shapes.values())
        record = {
            "method": config.method, "algorithm": ALGORITHMS[config.method], "bits": config.bits,
            "group_size": config.groups, "symmetric": True, "format": fmt,
            "model_name_or_path": config.model_name_or_path, "model_type": model.config.model_type,
            "dtype": str(dtype).removeprefix("torch."), "quantized_layers": sorted(linears),
            "not_quantized": "embeddings, norms and the output head (kept in dtype)",
            "calibration": None if blocks is None else {
                "source": data.source(), "num_samples": config.num_samples, "block_size": int(blocks.shape[1]),
                "seed": config.seed},
            "settings": ({"blocksize": config.blocksize, "percdamp": config.percdamp} if config.method == "gptq"
                         else {"grid": "alpha in {0, 0.05, ..., 0.95}", "scales": awq_log}
                         if config.method == "awq" else {}),
            "library": {"compfair": version_of("compfair"), "torch": torch.__version__,
                        "transformers": version_of("transformers"),
                        "compressed-tensors": version_of("compressed-tensors") if fmt == "compressed-tensors"
                        else None, "llmcompressor": None},
            "linear_parameters": parameters, "seconds": seconds,
            "seconds_per_million_parameters": seconds / (parameters / 1e6),
            "theoretical_linear_weight_bytes": checkpoint.theoretical_linear_bytes(
                shapes, config.bits, config.groups, element, fmt == "compressed-tensors"),
            "bytes": size_record(config.model_name_or_path, building, list(linears), RECORD_FILE),
        }
        write_record(building, RECORD_FILE, record)
    return record
