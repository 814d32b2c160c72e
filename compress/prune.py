"""Prune a causal LM's attention heads iteratively (Michel et al., 2019), by loss or by a bias measure.

    accelerate launch compress/prune.py trainer_configs/prune/wikitext_2560.yaml [--field value ...]
    python compress/prune.py CONFIG.yaml --output_dir runs/pruned/x --iterations 5
    python compress/prune.py CONFIG.yaml --importance bias --bias_data ../shared/data/winobias --max_perplexity 40

Writes to output_dir: the pruned model as a plain GPT-2 checkpoint (pruned heads are zeros), its
compact form in output_dir/compact (needs trust_remote_code), the tokenizer, and pruning.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file (`accelerate launch compress/prune.py`), Python puts compress/ itself first on sys.path,
    # where our subpackages (common, models, ...) would shadow libraries of the same name. The project root
    # goes there instead, so `compress` imports as the package it is and nothing of ours shadows a library.
    sys.path[0] = str(Path(__file__).resolve().parents[1])


from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments, build_lm_datasets, describe_data, sample_blocks
from compress.pruning.bias_choice import choose_bias_pairs
from compress.pruning.bias_objective import BiasObjective
from compress.pruning.config import PruningConfig
from compress.pruning.head_gates import check_supported
from compress.pruning.trainer import RECORD_FILE, HeadPruningTrainer


def load_model_and_tokenizer(config: PruningConfig):
    name = config.model_name_or_path
    try:
        model_config = AutoConfig.from_pretrained(name)
    except OSError as err:
        raise SystemExit(f"error: cannot load model {name!r}: {str(err).splitlines()[0]}") from None
    check_supported(model_config)  # before any weights are read
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation=config.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def main(argv: list[str] | None = None) -> dict | None:
    config, data_args = parse_config_and_flags((PruningConfig, DataArguments), argv)
    record_path = Path(config.output_dir) / RECORD_FILE
    if record_path.is_file():
        print(f"{record_path} exists: this run is complete (delete it to prune again)")
        return None
    bias_sources = choose_bias_pairs(config) if config.bias_data else []  # refuses leaky choices before loading
    model, tokenizer = load_model_and_tokenizer(config)
    bias_objective = (BiasObjective(bias_sources, tokenizer, batch_size=config.per_device_eval_batch_size)
                      if bias_sources else None)
    data = build_lm_datasets(data_args, tokenizer, seed=config.seed, main_process_first=config.main_process_first)
    importance = sample_blocks(data["train"], config.num_samples, config.seed)
    description = {**describe_data(data_args), "block_size": len(data["train"][0]["input_ids"]),
                   "validation_blocks": len(data["validation"])}
    trainer = HeadPruningTrainer(model=model, args=config, importance_dataset=importance,
                                 eval_dataset=data["validation"], train_dataset=data["train"],
                                 processing_class=tokenizer, data_description=description,
                                 bias_objective=bias_objective)
    record = trainer.prune()
    if config.lora_recovery:
        trainer.recover_with_lora()
    trainer.save_pruned()
    if trainer.is_world_process_zero():
        print(f"heads per iteration: {record['heads_per_iteration']}; perplexity: "
              f"{[round(p, 3) for p in record['perplexity_per_iteration']]}; saved to {config.output_dir}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
