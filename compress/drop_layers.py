"""Remove k decoder blocks from a causal LM, chosen by block importance on calibration text (layer dropping).

    accelerate launch compress/drop_layers.py trainer_configs/drop_layers/gpt2_angular_6.yaml [--field value ...]
    python compress/drop_layers.py CONFIG.yaml --output_dir runs/dropped/x --num_blocks_to_drop 4 \
        --method block_influence [--lora_healing true --max_steps 200]

Methods: angular_distance (Gromov et al. 2024) or block_influence (Men et al. 2024, ShortGPT). Writes to
output_dir: the shortened model as a stock checkpoint of its architecture with fewer blocks (it loads with
AutoModelForCausalLM anywhere), the tokenizer, and layer_dropping.json. A finished run (layer_dropping.json
present) is not redone.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file, Python puts compress/ itself first on sys.path, where our subpackages would shadow
    # libraries of the same name; the project root goes there instead (see compress/prune.py).
    sys.path[0] = str(Path(__file__).resolve().parents[1])


from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments, build_lm_datasets, describe_data, sample_blocks
from compress.layer_dropping.config import LayerDroppingConfig
from compress.layer_dropping.removal import check_blocks_to_remove
from compress.layer_dropping.trainer import RECORD_FILE, LayerDroppingTrainer
from compress.models.blocks import check_block_support, num_blocks_field


def check_model_config(config: LayerDroppingConfig):
    """The model's config, checked before any weights are read: a supported architecture with more blocks than
    are to be dropped. One-line SystemExit otherwise."""
    name = config.model_name_or_path
    try:
        model_config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load model {name!r}: {str(err).splitlines()[0]}") from None
    try:
        check_block_support(model_config)
        check_blocks_to_remove(model_config, range(config.num_blocks_to_drop))
    except ValueError as err:
        blocks = getattr(model_config, num_blocks_field(model_config), None) if hasattr(model_config, "model_type") \
            else None
        where = f"{name} ({blocks} blocks)" if isinstance(blocks, int) else name
        raise SystemExit(f"error: num_blocks_to_drop={config.num_blocks_to_drop}, model {where}: {err}") from None
    return model_config


def main(argv: list[str] | None = None) -> dict | None:
    config, data_args = parse_config_and_flags((LayerDroppingConfig, DataArguments), argv)
    record_path = Path(config.output_dir) / RECORD_FILE
    if record_path.is_file():
        print(f"{record_path} exists: this run is complete (delete it to drop blocks again)")
        return None
    check_model_config(config)
    model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path,
                                                 attn_implementation=config.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    data = build_lm_datasets(data_args, tokenizer, seed=config.seed, main_process_first=config.main_process_first)
    calibration = sample_blocks(data["train"], config.num_samples, config.seed)
    description = {**describe_data(data_args), "block_size": len(data["train"][0]["input_ids"]),
                   "validation_blocks": len(data["validation"])}
    trainer = LayerDroppingTrainer(model=model, args=config, importance_dataset=calibration,
                                   eval_dataset=data["validation"], train_dataset=data["train"],
                                   processing_class=tokenizer, data_description=description)
    record = trainer.drop()
    if config.lora_healing:
        trainer.heal_with_lora()
    trainer.save_dropped()
    if trainer.is_world_process_zero():
        healed = record["healing"]["perplexity_after_healing"] if record["healing"] else None
        print(f"removed blocks {record['blocks_removed']} of {record['num_blocks']['before']} ({config.method}); "
              f"perplexity {record['perplexity_before']:.3f} -> {record['perplexity_after']:.3f}"
              + (f" -> {healed:.3f} after healing" if healed is not None else "") + f"; saved to {config.output_dir}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
