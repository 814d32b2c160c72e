"""Settings of a layer-dropping run: `TrainingArguments` (batch sizes, precision, output_dir, and the optimiser
settings of the optional LoRA healing) plus the dropping fields, TRL-style.

Data fields (`dataset_name`, `train_file`, `block_size`, ...) live in `compress.common.lm_data.DataArguments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from compress.layer_dropping.importance import METHODS, TOKEN_POSITIONS


@dataclass
class LayerDroppingConfig(TrainingArguments):
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM to shorten (hub id or local folder); any architecture in "
                                        "compress/models/blocks.py."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2; default: the library's choice."})
    num_blocks_to_drop: int | None = field(
        default=None, metadata={"help": "How many decoder blocks to remove (k), at least 1, fewer than the model has."})
    method: str = field(
        default="angular_distance",
        metadata={"help": "angular_distance (Gromov et al. 2024: the span of k consecutive blocks whose input and "
                          "output are closest) or block_influence (Men et al. 2024, ShortGPT: the k blocks of lowest "
                          "1 - cos(input, output))."})
    token_positions: str = field(
        default="auto", metadata={"help": "Tokens the similarities average over: last, all, or auto (the method's "
                                          "paper: last for angular_distance, all for block_influence)."})
    num_samples: int = field(
        default=256, metadata={"help": "Calibration blocks (of block_size tokens) sampled from train with `seed`."})
    lora_healing: bool = field(
        default=False, metadata={"help": "Fine-tune the shortened model with LoRA (peft) afterwards, merged on save; "
                                         "length and optimiser come from max_steps/num_train_epochs/learning_rate."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get LoRA adapters; all-linear: every linear (and GPT-2 Conv1D) layer but the "
                          "output head."})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required (e.g. gpt2, Qwen/Qwen2.5-0.5B)")
        if self.output_dir is None:
            raise ValueError("output_dir is required")
        if self.num_blocks_to_drop is None:
            raise ValueError("num_blocks_to_drop is required: how many decoder blocks to remove")
        if self.num_blocks_to_drop < 1:
            raise ValueError(f"num_blocks_to_drop must be at least 1, got {self.num_blocks_to_drop}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.token_positions not in TOKEN_POSITIONS:
            raise ValueError(f"token_positions must be one of {', '.join(TOKEN_POSITIONS)}, got "
                             f"{self.token_positions!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        super().__post_init__()
