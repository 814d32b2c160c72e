"""Settings of an iterative head-pruning run: `TrainingArguments` (batch sizes, precision, output_dir,
and the optimiser settings of the optional LoRA recovery) plus the pruning fields, TRL-style.

Data fields (`dataset_name`, `train_file`, `block_size`, ...) live in `compress.common.lm_data.DataArguments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PruningConfig(TrainingArguments):
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Causal LM to prune (hub id or local folder) of a family in "
                                        "compress.models.attention.LAYOUTS: gpt2, llama, mistral, qwen2, qwen3, "
                                        "gemma2, gemma3_text, phi3, gpt_neox, opt."})
    unit: str = field(
        default="kv_group", metadata={"help": "What one pruning step removes: kv_group (a KV head and the query heads "
                                              "sharing it; a query head without GQA) or query_head (query heads one by "
                                              "one; with GQA only the portable form can be saved)."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2; default: the library's choice."})
    num_samples: int = field(
        default=2560, metadata={"help": "Training blocks (of block_size tokens) sampled with `seed` to estimate "
                                        "head importance; smaller subsets are prefixes of larger ones."})
    prune_fraction: float = field(
        default=0.05, metadata={"help": "Share of the remaining units masked per iteration, in (0, 1)."})
    iterations: int | None = field(default=3, metadata={"help": "Stop after this many iterations."})
    target_heads: int | None = field(
        default=None, metadata={"help": "Stop once this many units are left (never prunes below it)."})
    max_perplexity: float | None = field(
        default=None, metadata={"help": "Stop, undoing the last iteration, when validation perplexity exceeds this."})
    normalize_importance: bool = field(
        default=True, metadata={"help": "L2-normalise importance within each layer (Michel et al.)."})
    importance: str = field(
        default="loss", metadata={"help": "What head importance measures: loss (Michel et al.: |dL/d gate|) or "
                                          "bias (FASP-style: the heads whose removal lowers the bias measure on "
                                          "bias_data most, to first order, go first; compress/pruning/"
                                          "bias_objective.py). With max_perplexity as the bound on the damage."})
    bias_data: list[str] | None = field(
        default=None, metadata={"help": "Bias data heads are chosen on (importance bias) or measured on (loss): "
                                        "WinoBias folders (the official files; the bias_split pairs) and/or "
                                        "StereoSet files (a held-out share of the target terms)."})
    bias_eval_data: list[str] | None = field(
        default=None, metadata={"help": "What the model will be evaluated on, one WinoBias folder and/or one "
                                        "StereoSet file; checked disjoint from the choosing data. Default: the "
                                        "bias_data sources themselves (their other split / other terms)."})
    bias_split: str = field(
        default="dev", metadata={"help": "WinoBias split heads are chosen on; dev (test is what is evaluated)."})
    bias_target_fraction: float = field(
        default=0.5, metadata={"help": "Share of StereoSet target terms heads are chosen on (seeded by seed); "
                                       "the others are held out for evaluation."})
    bias_overlap: str = field(
        default="leave_out", metadata={"help": "A choosing pair sharing a sentence with the evaluation data: "
                                               "leave_out (listed in pruning.json) or refuse."})
    bias_max_pairs: int | None = field(
        default=None, metadata={"help": "Use at most this many choosing pairs per source (a seeded sample)."})
    save_compact: bool = field(
        default=True, metadata={"help": "Also save the compact form (per-layer head counts) in output_dir/compact."})
    measure_speedup: bool = field(
        default=True, metadata={"help": "Time the compact model against the unpruned one on a validation batch."})
    lora_recovery: bool = field(
        default=False, metadata={"help": "Fine-tune the pruned model with LoRA (peft) afterwards, merged on save; "
                                         "length and optimiser come from max_steps/num_train_epochs/learning_rate."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get LoRA adapters; default: c_attn, c_proj, c_fc for GPT-2, "
                                        "every linear layer (peft's all-linear) for the other families."})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required (e.g. gpt2, distilgpt2, microsoft/DialoGPT-small)")
        if self.output_dir is None:
            raise ValueError("output_dir is required")
        if not 0 < self.prune_fraction < 1:
            raise ValueError(f"prune_fraction must be in (0, 1), got {self.prune_fraction}")
        if self.unit not in ("kv_group", "query_head"):
            raise ValueError(f"unit must be kv_group or query_head, got {self.unit!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.iterations is None and self.target_heads is None and self.max_perplexity is None:
            raise ValueError("set a stop option: iterations, target_heads or max_perplexity")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.target_heads is not None and self.target_heads < 1:
            raise ValueError(f"target_heads must be at least 1, got {self.target_heads}")
        if self.max_perplexity is not None and self.max_perplexity <= 1:
            raise ValueError(f"max_perplexity must be above 1, got {self.max_perplexity}")
        if self.importance not in ("loss", "bias"):
            raise ValueError(f"importance must be loss or bias, got {self.importance!r}")
        if self.importance == "bias" and not self.bias_data:
            raise ValueError("importance bias needs bias_data (a WinoBias folder or a StereoSet file)")
        if self.bias_overlap not in ("leave_out", "refuse"):
            raise ValueError(f"bias_overlap must be leave_out or refuse, got {self.bias_overlap!r}")
        if not 0 < self.bias_target_fraction < 1:
            raise ValueError(f"bias_target_fraction must be in (0, 1), got {self.bias_target_fraction}")
        if self.bias_max_pairs is not None and self.bias_max_pairs < 1:
            raise ValueError(f"bias_max_pairs must be at least 1, got {self.bias_max_pairs}")
        super().__post_init__()

    def fingerprint(self) -> dict:
        """The settings that decide which heads get pruned: a resumed run must match them. (The bias settings
        join only when used, so a loss-only run started before they existed still resumes.)"""
        settings = {"model_name_or_path": self.model_name_or_path, "num_samples": self.num_samples,
                    "prune_fraction": self.prune_fraction, "target_heads": self.target_heads,
                    "max_perplexity": self.max_perplexity, "normalize_importance": self.normalize_importance,
                    "seed": self.seed, "unit": self.unit}
        if self.importance != "loss" or self.bias_data:
            settings.update(importance=self.importance, bias_data=self.bias_data,
                            bias_eval_data=self.bias_eval_data, bias_split=self.bias_split,
                            bias_target_fraction=self.bias_target_fraction, bias_overlap=self.bias_overlap,
                            bias_max_pairs=self.bias_max_pairs)
        return settings
