"""A report over one model of every method, for the tests of the figures, report.html and the closing summary.

teacher (original) and copy (distilled, the same values on every document: its points coincide with the
teacher's), rand (distilled from random blocks: more toxic on every document, its perplexity four decades up:
the log axes must still not crowd their labels), pruned (head pruning), dropped (layer dropping), q4
(quantization), s24 (sparsity). Tasks: compfair_tox4k (toxicity, generation length, a 0/1 outcome for flips),
compfair_rtp, _random4k, _safe4k (toxic score), compfair_winobias_type1 (anti-stereotype wins and rate) and
demo_perplexity (word perplexity).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from report_fixtures import write_lm_eval_run

N_DOCS = 40
METHODS = {"teacher": "original", "copy": "distillation", "rand": "distillation", "pruned": "head pruning",
           "dropped": "layer dropping", "q4": "quantization", "s24": "sparsity"}
# Escaped on the page: it is text from a record, and must never become markup.
DISTILLATION_DATA = "corpus <script>alert(1)</script> & more.txt"
CALIBRATION_SOURCE = "calibration/wiki.txt"


# What the study writes beside a teacher it trained itself (the demo's).
TEACHER_RECORD = {"model": "tiny GPT-2", "steps": 200, "train_file": "teacher_corpus.txt", "block_size": 32,
                  "heldout_token_perplexity": 149.9, "unigram_token_perplexity": 499.7}


def _records(teacher: str) -> dict[str, tuple[str, dict]]:
    return {
        "teacher": ("teacher.json", TEACHER_RECORD),
        "copy": ("distillation.json", {"teacher": teacher, "student_layers": 6, "teacher_layers": 12,
                                       "init_from_teacher": True, "kept_layers": [0, 2, 4, 7, 9, 11],
                                       "student_parameters": 3000, "global_step": 100, "temperature": 2.0,
                                       "data": DISTILLATION_DATA, "block_size": 32, "train_blocks": 47}),
        "rand": ("distillation.json", {"teacher": teacher, "student_layers": 4, "teacher_layers": 12,
                                       "init_from_teacher": False, "student_parameters": 2000, "global_step": 100,
                                       "temperature": 2.0, "data": DISTILLATION_DATA, "block_size": 32,
                                       "train_blocks": 47}),
        "pruned": ("pruning.json", {"model_name_or_path": teacher, "num_samples": 256,
                                    "heads_per_iteration": [144, 136, 129, 122],
                                    "perplexity_per_iteration": [20.0, 20.5, 21.0, 22.0],
                                    "parameter_count": {"unpruned": 5000, "pruned": 4500},
                                    "data_subset": {"train_file": "prune.txt", "num_samples": 256}}),
        "dropped": ("layer_dropping.json", {"model_name_or_path": teacher, "method": "angular_distance",
                                            "num_blocks": {"before": 12, "after": 10}, "blocks_removed": [8, 9],
                                            "parameter_count": {"before": 5000, "after": 4200},
                                            "calibration": {"train_file": CALIBRATION_SOURCE, "num_samples": 16}}),
        "q4": ("quantization.json", {"method": "gptq", "bits": 4, "group_size": 128, "format": "compressed-tensors",
                                     "model_name_or_path": teacher,
                                     "calibration": {"source": CALIBRATION_SOURCE, "num_samples": 32,
                                                     "block_size": 64}}),
        "s24": ("sparsity.json", {"method": "wanda", "pattern": "2:4", "overall_sparsity": 0.5,
                                  "model_name_or_path": teacher,
                                  "calibration": {"source": CALIBRATION_SOURCE, "num_samples": 32,
                                                  "block_size": 64}}),
    }


# (toxicity shift, perplexity log-likelihood scale, generation length shift) per model
SHIFTS = {"teacher": (0.0, 1.0, 0), "copy": (0.0, 1.0, 0), "rand": (0.2, 4.0, -3), "pruned": (-0.02, 1.1, 0),
          "dropped": (0.04, 1.2, -1), "q4": (0.01, 1.05, 0), "s24": (0.01, 1.15, 1)}


# s24 differs from the teacher by a small shift plus alternating noise: raw p-values near 0.05 that the
# correction over every comparison should not all let through.
NOISE = {"s24": 0.03}


def tasks_of(name: str, rng_seed: int = 0) -> dict[str, dict[str, list]]:
    """The per-document values each model is given (the same base draw for all, shifted per model)."""
    rng = random.Random(rng_seed)
    scores = [rng.uniform(0.05, 0.6) for _ in range(N_DOCS)]
    lengths = [rng.randint(8, 20) for _ in range(N_DOCS)]
    loglik = [[-rng.uniform(10, 60), rng.randint(5, 15)] for _ in range(N_DOCS)]
    anti = [rng.randint(0, 1) for _ in range(N_DOCS)]
    shift, scale, longer = SHIFTS[name]
    tox = [min(1.0, s + shift + NOISE.get(name, 0.0) * (1 if i % 2 else -1)) for i, s in enumerate(scores)]
    return {
        "compfair_tox4k": {"toxic_score": [3 * s for s in tox], "toxic_count": [3 * int(s > 0.5) for s in tox],
                           "toxicity_mean": tox, "toxicity_probability": [float(s > 0.5) for s in tox],
                           "gen_length_tokens": [n + longer for n in lengths],
                           "gen_length_chars": [4 * (n + longer) for n in lengths]},
        # three more prompt sets and a rate: enough perplexity panels for two rows, under a title
        **{task: {"toxic_score": [3 * s for s in tox]} for task in ("compfair_rtp", "compfair_random4k",
                                                                     "compfair_safe4k")},
        "compfair_winobias_type1": {"anti_count": [a if name != "rand" else 1 - a for a in anti],
                                    "anti_rate": [a if name != "rand" else 1 - a for a in anti]},
        "demo_perplexity": {"word_perplexity": [[ll * scale, n] for ll, n in loglik]},
    }


def build_zoo(root: Path) -> list[Path]:
    """Write every model's folder and lm-eval output under root; returns the results directories."""
    models = root / "models"
    teacher = str(models / "teacher")
    dirs = []
    for name, record in _records(teacher).items():
        folder = models / name
        folder.mkdir(parents=True)
        layers = {"copy": 6, "rand": 4, "dropped": 10}.get(name, 12)
        (folder / "config.json").write_text(json.dumps({"n_layer": layers, "n_head": 12}))
        (folder / record[0]).write_text(json.dumps(record[1]))
        params = record[1].get("student_parameters") or 5000
        write_lm_eval_run(root / "eval" / name, str(folder), tasks_of(name), num_parameters=params)
        dirs.append(root / "eval" / name)
    return dirs
