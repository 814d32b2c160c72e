"""Distil a causal LM teacher (GPT-2) into a shallower student.

    accelerate launch [--config_file trainer_configs/accelerate/single_gpu.yaml] \\
        compress/distill.py trainer_configs/distill/A.yaml [--field value ...]

Any field of `StudentArguments`, `compress.common.lm_data.DataArguments` or `DistillationConfig` (which
extends `transformers.TrainingArguments`) can be set in the YAML file or overridden by a flag.
The output directory receives the best student (a standard Hugging Face checkpoint), its tokenizer,
and `distillation.json`, a summary that the report reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file (`accelerate launch compress/distill.py`), Python puts compress/ itself first on sys.path,
    # where our subpackages (common, models, ...) would shadow libraries of the same name. The project root
    # goes there instead, so `compress` imports as the package it is and nothing of ours shadows a library.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os

from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed
from transformers.trainer_utils import get_last_checkpoint

from compress.common.arguments import parse_config_and_flags
from compress.common.atomic_files import write_json_atomically
from compress.common.lm_data import DataArguments, build_lm_datasets
from compress.distillation.config import DistillationConfig, StudentArguments
from compress.distillation.trainer import DistillationTrainer, perplexity
from compress.models.students import build_student, count_parameters

SUMMARY_FILE = "distillation.json"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_teacher(name: str):
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype="float32")
    except Exception as err:  # missing folder, no network, not a causal LM: one line naming the teacher
        raise SystemExit(f"error: could not load teacher {name!r} ({_first_line(err)})") from None


def load_tokenizer(student_args: StudentArguments):
    """The teacher's tokenizer, or `tokenizer_name` if it has exactly the teacher's vocabulary."""
    def load(name):
        try:
            return AutoTokenizer.from_pretrained(name)
        except Exception as err:
            raise SystemExit(f"error: could not load tokenizer {name!r} ({_first_line(err)})") from None

    teacher_tokenizer = load(student_args.teacher_name_or_path)
    if student_args.tokenizer_name is None:
        return teacher_tokenizer
    tokenizer = load(student_args.tokenizer_name)
    if tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise SystemExit(f"error: tokenizer {student_args.tokenizer_name!r} differs from the teacher's "
                         f"({len(tokenizer)} vs {len(teacher_tokenizer)} tokens, or different ids); distillation "
                         "compares the two models token by token, so they must share one vocabulary")
    return tokenizer


def load_student(name: str, tokenizer):
    """A pretrained student that shares the teacher's tokenizer (`tokenizer`); padding rows may differ."""
    try:
        student_tokenizer = AutoTokenizer.from_pretrained(name)
        student = AutoModelForCausalLM.from_pretrained(name, dtype="float32")
    except Exception as err:
        raise SystemExit(f"error: could not load student {name!r} ({_first_line(err)})") from None
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"error: student {name!r} has a different tokenizer from the teacher's "
                         f"({len(student_tokenizer)} vs {len(tokenizer)} tokens, or different ids); distillation "
                         "compares the two models token by token, so they must share one tokenizer")
    rows = student.get_output_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise SystemExit(f"error: student {name!r} has {rows} output rows for a tokenizer of {len(tokenizer)} "
                         "tokens")
    return student


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """`auto`: the last checkpoint in output_dir if there is one; a path: that checkpoint; None: start fresh."""
    if value is None:
        return None
    if value == "auto":
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(value):
        raise SystemExit(f"error: resume_from_checkpoint {value} is not a checkpoint folder (or use 'auto')")
    return value


def main(argv: list[str] | None = None) -> dict:
    student_args, data_args, config = parse_config_and_flags((StudentArguments, DataArguments, DistillationConfig),
                                                             argv)
    if config.output_dir is None:
        raise SystemExit("error: set output_dir (where the student is written)")
    set_seed(config.seed)

    teacher = load_teacher(student_args.teacher_name_or_path)
    tokenizer = load_tokenizer(student_args)
    if len(tokenizer) > teacher.config.vocab_size:
        raise SystemExit(f"error: the tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary only "
                         f"{teacher.config.vocab_size}")
    max_positions = getattr(teacher.config, "max_position_embeddings", None)
    if data_args.block_size and max_positions and data_args.block_size > max_positions:
        raise SystemExit(f"error: block_size {data_args.block_size} exceeds the teacher's {max_positions} positions")
    if data_args.block_size is None and max_positions:
        data_args.block_size = min(tokenizer.model_max_length, max_positions, 1024)
    if student_args.student_name_or_path:
        student, kept_layers = load_student(student_args.student_name_or_path, tokenizer), None
    else:
        try:
            student, kept_layers = build_student(teacher, student_args.student_layers,
                                                 student_args.init_from_teacher, student_args.layer_selection)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    student_parameters = count_parameters(student)  # before any wrapper shards it

    data = build_lm_datasets(data_args, tokenizer, seed=config.seed, main_process_first=config.main_process_first)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=data["train"],
                                  eval_dataset=data["validation"], processing_class=tokenizer,
                                  data_collator=default_data_collator)
    checkpoint = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # the best checkpoint when load_best_model_at_end, else the last
    metrics = trainer.evaluate()
    trainer.log_metrics("train", train_result.metrics)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("all", {**train_result.metrics, **metrics})
    trainer.save_state()

    summary = {
        "teacher": student_args.teacher_name_or_path,
        "student": student_args.student_name_or_path,
        "student_layers": student.config.num_hidden_layers,
        "teacher_layers": teacher.config.num_hidden_layers,
        "kept_layers": kept_layers,
        "init_from_teacher": student_args.init_from_teacher and not student_args.student_name_or_path,
        "layer_selection": student_args.layer_selection,
        "teacher_parameters": count_parameters(teacher),
        "student_parameters": student_parameters,
        "eval_loss": metrics["eval_loss"],
        "perplexity": perplexity(metrics["eval_loss"]),
        "train_loss": train_result.training_loss,
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "temperature": config.temperature,
        "alpha_kd": config.alpha_kd,
        "alpha_ce": config.alpha_ce,
        "alpha_cos": config.alpha_cos,
        "data": data_args.train_file or data_args.dataset_name,
        "dataset_fraction": data_args.dataset_fraction,
        "block_size": data_args.block_size,
        "train_blocks": len(data["train"]),
        "validation_blocks": len(data["validation"]),
        "seed": config.seed,
    }
    if trainer.is_world_process_zero():
        write_json_atomically(Path(config.output_dir) / SUMMARY_FILE, summary)
    return summary


if __name__ == "__main__":
    main()
