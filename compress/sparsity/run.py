"""Sparsify a causal LM layer by layer and save it as a stock checkpoint (zeros in the weights) with sparsity.json."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from compress.common.calibration import CalibrationData, batches_of, calibration_blocks
from compress.common.checkpoint_files import building_folder
from compress.common.post_training import load_model_and_tokenizer, size_record, version_of, write_record
from compress.models.blocks import decoder_blocks
from compress.models.layerwise import (
    block_linears,
    compress_block_by_block,
    layer_spec,
    out_in_features,
    set_weight_out_in,
    weight_out_in,
)
from compress.sparsity.config import SparsityConfig
from compress.sparsity.masks import magnitude_mask, sparsegpt_prune, wanda_mask

RECORD_FILE = "sparsity.json"


def check_pattern_fits(model, config: SparsityConfig) -> None:
    if not config.n_m:
        return
    m = config.n_m[1]
    for index, block in enumerate(decoder_blocks(model)):
        for name, module in block_linears(model, block).items():
            width = out_in_features(module)[1]
            if width % m:
                raise SystemExit(f"error: pattern {config.pattern}: M={m} does not divide the {width} input "
                                 f"features of block {index} {name}")


def prune_layer(config: SparsityConfig, weight: torch.Tensor, stats) -> torch.Tensor:
    if config.method == "magnitude":
        return weight * ~magnitude_mask(weight, config.sparsity, config.n_m)
    if config.method == "wanda":
        return weight * ~wanda_mask(weight, stats.input_norms(), config.sparsity, config.n_m)
    return sparsegpt_prune(weight, stats.hessian(), config.sparsity, config.n_m, config.blocksize, config.percdamp)


def sparsify_model(model, config: SparsityConfig, blocks: torch.Tensor | None) -> dict[str, float]:
    """Prune every linear layer of every block in place; returns {layer: achieved share of zeros}."""
    achieved = {}
    prefix = _blocks_prefix(model)

    def record(index, name, module):
        weight = module.weight
        achieved[f"{prefix}.{index}.{name}"] = (weight == 0).sum().item() / weight.numel()

    if blocks is None:  # magnitude: no calibration
        for index, block in enumerate(decoder_blocks(model)):
            for name, module in block_linears(model, block).items():
                set_weight_out_in(module, prune_layer(config, weight_out_in(module), None))
                record(index, name, module)
        return achieved

    def compress_block(index, block, linears, stats):
        for name, module in linears.items():
            set_weight_out_in(module, prune_layer(config, weight_out_in(module), stats[name]))
            record(index, name, module)

    compress_block_by_block(model, batches_of(blocks, config.calibration_batch_size), compress_block,
                            hessian=config.method == "sparsegpt")
    return achieved


def _blocks_prefix(model) -> str:
    blocks = decoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


def run(config: SparsityConfig, data: CalibrationData) -> dict | None:
    out_dir = Path(config.output_dir)
    if (out_dir / RECORD_FILE).is_file():
        print(f"{out_dir / RECORD_FILE} exists: this run is complete (delete it to sparsify again)")
        return None
    from compress.common.post_training import load_config

    layer_spec(load_config(config.model_name_or_path))  # before any weights are read
    if config.needs_calibration and not data.has_data:
        raise SystemExit(f"error: method {config.method} needs calibration text: set train_file or dataset_name")
    model, tokenizer = load_model_and_tokenizer(config.model_name_or_path, config.dtype)
    check_pattern_fits(model, config)
    blocks = calibration_blocks(data, tokenizer, config.num_samples, config.seed) if config.needs_calibration else None
    started = time.monotonic()
    with torch.no_grad():
        achieved = sparsify_model(model, config, blocks)
    seconds = time.monotonic() - started
    linear_params = sum(m.weight.numel() for b in decoder_blocks(model) for m in block_linears(model, b).values())
    with building_folder(out_dir) as building:
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        record = {
            "method": config.method, "sparsity": config.sparsity, "pattern": config.pattern or "unstructured",
            "model_name_or_path": config.model_name_or_path, "model_type": model.config.model_type,
            "dtype": config.dtype, "format": "dense (zeros stored in a stock checkpoint)",
            "calibration": None if blocks is None else {
                "source": data.source(), "num_samples": config.num_samples, "block_size": int(blocks.shape[1]),
                "seed": config.seed},
            "settings": {"blocksize": config.blocksize, "percdamp": config.percdamp} if config.method == "sparsegpt"
            else {},
            "library": {"compfair": version_of("compfair"), "torch": torch.__version__,
                        "transformers": version_of("transformers")},
            "per_layer_sparsity": achieved,
            "overall_sparsity": sum(achieved[k] for k in achieved) / len(achieved),
            "linear_parameters": linear_params, "seconds": seconds,
            "seconds_per_million_parameters": seconds / (linear_params / 1e6),
            "bytes": size_record(config.model_name_or_path, building, list(_linear_names(model)), RECORD_FILE),
        }
        write_record(building, RECORD_FILE, record)
    return record


def _linear_names(model):
    prefix = _blocks_prefix(model)
    for index, block in enumerate(decoder_blocks(model)):
        for name in block_linears(model, block):
            yield f"{prefix}.{index}.{name}"
