"""The study end to end, as stages that each skip work already done.

    python -m compress.study reproduce [--runs runs] [--models A,gpt2] [--stages distill,evaluate] ...
    python -m compress.study demo      [--runs runs/demo] ...

Stages, in order (`--stages` picks some; each can run alone once its inputs exist):

    teacher   demo: train a tiny GPT-2 teacher on the bundled WikiText-2 text (compress/study/demo_teacher.py)
              and build the tiny Detoxify-format scorers; reproduce: nothing (GPT-2 and Detoxify come from the hub)
    prompts   curate the toxicity prompt sets with `compfair-prompts` into the data dir (the demo also
              puts its bundled StereoSet and WinoBias samples and its held-out perplexity text there)
    distill   `compress/distill.py` for each student (A, B, Bnot, C, D, Dnot)
    prune     `compress/prune.py` for each pruning data size
    drop_layers `compress/drop_layers.py` for each model shortened by layer dropping (the modern preset)
    quantize  `compress/quantize.py` for each quantized model (demo: GPTQ 4-bit of the teacher)
    sparsify  `compress/sparsify.py` for each sparse model (demo: Wanda 2:4 of the teacher)
    evaluate  `lm_eval` on every model: the toxicity and bias tasks and a perplexity task, with
              --log_samples, into RUNS/eval/<model>
    report    `compfair-report` over every evaluated model into RUNS/report

A stage's unit of work is done when its output is complete: the data dir's manifest and prompt files,
`distillation.json` / `pruning.json` (written last by the trainers), an evaluation marker written after
lm-eval exits successfully. Those units are skipped, so an interrupted run picks up where it stopped.
`--models` narrows the work to some models (the report still covers every evaluated model).

`--study modern` swaps the paper's models for MODERN_PRESET: one configurable teacher (`--teacher`, default
Qwen/Qwen2.5-0.5B; the demo's tiny GPT-2 in `demo`) through every method at two or three strengths, each
model compared in the report with that teacher (the baseline its trainer record names).

`reproduce` is the paper's study on real models (hub access, a GPU); `demo` is the same pipeline
offline on a tiny embedded default that finishes in minutes on a CPU: it swaps the teacher, the data,
the scorer and the step counts, and runs every step in this process to save their start-up time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from compress.common.atomic_files import write_json_atomically
from compress.study.demo_teacher import TeacherRecipe

REPO = Path(__file__).resolve().parents[2]
STAGES = ("teacher", "prompts", "distill", "prune", "drop_layers", "quantize", "sparsify", "evaluate", "report")
STUDENTS = ("A", "B", "Bnot", "C", "D", "Dnot")
PRUNE_SUBSETS = (256, 1280, 2560, 5120, 12800)
PROMPT_FILES = ("rtp.jsonl", "tox4k.jsonl", "random4k.jsonl", "safe4k.jsonl", "manifest.json")
EVAL_MARKER = "compfair_eval_{batch}.json"
# The demo's threads per step (`--threads`, default every core). On a busy machine torch's spinning worker
# threads can make each step several times slower than one thread would: pass --threads 1 there.
def demo_threads(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
# Evaluation beyond the paper (CrowS-Pairs, ...): tasks evaluated in both plans, and the bundled demo data
# folders they read (each task falls back to its hub copy where the data dir lacks its file).
EXTRA_TASKS = ("compfair_crows_pairs", "compfair_bold")
EXTRA_DEMO_DATA = ("crows_pairs", "bold")


@dataclass
class Step:
    """One unit of work: a module's command line, run in its own process or, in the demo, in this one."""

    module: str  # compress.distill, compress.prune, compress.toxicity.prompts, compress.report.cli or lm_eval
    argv: list[str]
    launcher: list[str] = field(default_factory=lambda: [sys.executable])
    script: bool = False  # launched as a file (compress/distill.py), as `accelerate launch` wants

    def command(self) -> list[str]:
        target = [self.module.replace(".", "/") + ".py"] if self.script else ["-m", self.module]
        return [*self.launcher, *target, *self.argv]


@dataclass
class Model:
    """One model of the study: where it comes from, how it is built, how lm-eval loads it."""

    name: str
    kind: str  # teacher | student | pruned | dropped | quantized | sparse | baseline
    pretrained: str  # hub name or local folder
    backend: str = "causal"  # causal | seq2seq
    build: Step | None = None  # the trainer run that writes `pretrained`
    done_file: str | None = None  # written last by the trainer: its presence means the build is complete
    compare_with: str | None = None  # the baseline of a model that no trainer record names
    distilled: bool = False  # distilled elsewhere (a hub model): the report must be told
    model_args: str = ""  # extra lm-eval --model_args for this model


@dataclass
class EvalBatch:
    """One lm-eval run per model: tasks and the environment they read."""

    label: str
    tasks: list[str]
    env: dict[str, str] = field(default_factory=dict)
    causal_only: bool = False  # e.g. rolling perplexity, which seq2seq backends do not support


@dataclass
class Plan:
    name: str
    runs: Path
    data_dir: Path
    models: list[Model]
    eval_batches: list[EvalBatch]
    lm_eval_launcher: list[str]  # what runs `-m lm_eval`: python, or accelerate launch for data parallel
    lm_eval_args: list[str]
    model_args: str  # extra model_args for every model, e.g. dtype=float32
    prompt_steps: list[Step]
    env: dict[str, str] = field(default_factory=dict)
    in_process: bool = False  # run every step in this process (saves each step's start-up on a small CPU)
    study: str = "paper"  # paper | modern (MODERN_PRESET on one configurable teacher)

    @property
    def eval_root(self) -> Path:
        return self.runs / "eval"

    @property
    def report_dir(self) -> Path:
        return self.runs / "report"


def log(message: str) -> None:
    print(f"[compfair study] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Whether the in-process lm-eval call now running names a task only lm-eval's built-in folder defines.
_builtin_tasks_wanted = [True]


def _index_builtin_lm_eval_tasks_once() -> None:
    """lm-eval's CLI indexes its thousands of built-in task YAMLs on every call (about 7 s here), and the
    in-process demo calls it once per model. The built-in folder cannot change during a run, so its index is
    built once and reused, and not built at all for a call whose tasks are all ours (`_builtin_tasks_wanted`);
    the `--include_path` folders (ours) are indexed afresh on every call, as before."""
    from lm_eval.tasks import _index

    if getattr(_index.TaskIndex.build, "builtins_cached", False):
        return
    build, builtin, cache = _index.TaskIndex.build, Path(_index.__file__).resolve().parent, {}

    def build_with_cached_builtins(paths, *, resolve_includes=True):
        index = {}
        for root in paths:  # in order: a later folder's task overrides an earlier one's, as in build
            if Path(root).resolve() == builtin:
                if not _builtin_tasks_wanted[0]:
                    continue
                if resolve_includes not in cache:
                    cache[resolve_includes] = build([root], resolve_includes=resolve_includes)
                index.update(cache[resolve_includes])
            else:
                index.update(build([root], resolve_includes=resolve_includes))
        return index

    build_with_cached_builtins.builtins_cached = True
    _index.TaskIndex.build = staticmethod(build_with_cached_builtins)


def _collect_lm_eval_environment_once() -> None:
    """lm-eval records the environment (torch's collect_env, library versions, git hashes: about 1 s) in every
    results file. Within one process it cannot change, so the in-process demo collects it once and copies it
    into each model's results."""
    from lm_eval import evaluator

    if getattr(evaluator.add_env_info, "collected_once", False):
        return
    collect, collected = evaluator.add_env_info, {}

    def add_env_info(storage: dict) -> None:
        if not collected:
            collect(collected)
        storage.update(collected)

    add_env_info.collected_once = True
    evaluator.add_env_info = add_env_info


def _names_builtin_tasks(argv: list[str]) -> bool:
    """Whether an lm-eval command line names a task that is neither a YAML file nor defined under its
    `--include_path` folders (so only lm-eval's built-in folder can define it)."""
    from lm_eval.tasks import _index

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else ""

    names = {t for t in value("--tasks").split(",") if t and not t.endswith((".yaml", ".yml"))}
    folder = value("--include_path")  # lm-eval takes one folder
    ours = set(_index.TaskIndex.build([Path(folder)])) if folder else set()
    return not names <= ours


def _call_in_process(step: Step) -> int:
    """The step's `main(argv)` here; lm-eval's CLI reads sys.argv, so it gets one."""
    try:
        if step.module == "lm_eval":
            from lm_eval.__main__ import cli_evaluate

            _index_builtin_lm_eval_tasks_once()
            _collect_lm_eval_environment_once()
            _builtin_tasks_wanted[0] = _names_builtin_tasks(step.argv)
            saved, sys.argv = sys.argv, ["lm_eval", *step.argv]
            try:
                cli_evaluate()
            finally:
                sys.argv, _builtin_tasks_wanted[0] = saved, True
        else:
            importlib.import_module(step.module).main(step.argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            print(stop.code if isinstance(stop.code, str) else f"exit {stop.code}", file=sys.stderr)
            return stop.code if isinstance(stop.code, int) else 1
    return 0


def run_step(step: Step, what: str, env: dict[str, str], in_process: bool = False) -> None:
    """Run one unit of work; a failure ends the study with one line naming it."""
    log(f"{what}: {shlex.join(step.command())}")
    started = time.monotonic()
    if in_process:
        with _environment(env):
            code = _call_in_process(step)
    else:
        code = subprocess.run(step.command(), env={**os.environ, **env}, cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"error: {what} failed (exit {code}); the output above says why. "
                         "Completed work is kept: run the same command again to resume.")
    log(f"{what}: done in {time.monotonic() - started:.0f}s")


# ---------------------------------------------------------------------------------------------- plans


def _launcher(accelerate_config: str | None) -> list[str]:
    if accelerate_config is None:  # one process: no accelerate start-up cost
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]


def reproduce_plan(args: argparse.Namespace) -> Plan:
    runs = Path(args.runs)
    data_dir = Path(args.data_dir) if args.data_dir else runs / "prompts"
    launch = _launcher(args.accelerate_config)
    models = [Model("gpt2", "teacher", "gpt2"),
              Model("distilgpt2", "baseline", "distilgpt2", compare_with="gpt2", distilled=True)]
    for student in STUDENTS:
        out = runs / "students" / student
        models.append(Model(student, "student", str(out), done_file="distillation.json", build=Step(
            "compress.distill", [f"trainer_configs/distill/{student}.yaml", "--output_dir", str(out)], launch,
            script=True)))
    for subset in PRUNE_SUBSETS:
        out = runs / "pruned" / f"wikitext_{subset}"
        models.append(Model(f"wikitext_{subset}", "pruned", str(out), done_file="pruning.json", build=Step(
            "compress.prune", [f"trainer_configs/prune/wikitext_{subset}.yaml", "--output_dir", str(out)], launch,
            script=True)))
    # The paper's ablations: DialoGPT at three sizes, BlenderBot distilled from 3B into 400M.
    for size in ("small", "medium"):
        models.append(Model(f"DialoGPT-{size}", "baseline", f"microsoft/DialoGPT-{size}",
                            compare_with="DialoGPT-large"))
    models.append(Model("DialoGPT-large", "baseline", "microsoft/DialoGPT-large"))
    # BlenderBot has 128 positions and lm-eval's seq2seq generation may run to prompt + max_gen_toks tokens:
    # cap the encoder input at 128 - 20 so a long prompt cannot overrun the position table.
    blenderbot_args = "max_length=108"
    models.append(Model("blenderbot-400M-distill", "baseline", "facebook/blenderbot-400M-distill", "seq2seq",
                        compare_with="blenderbot-3B", distilled=True, model_args=blenderbot_args))
    models.append(Model("blenderbot-3B", "baseline", "facebook/blenderbot-3B", "seq2seq",
                        model_args=blenderbot_args))

    prompts = [Step("compress.toxicity.prompts", ["rtp", "--source", args.rtp_source, "--out", str(data_dir)])]
    if args.tccc_train:
        prompts.append(Step("compress.toxicity.prompts", ["tccc", "--source", args.tccc_train, "--out", str(data_dir)]))
    data_env = {"COMPFAIR_DATA_DIR": str(data_dir.resolve())}
    # StereoSet and WinoBias come from the hub unless the data dir holds the official files.
    has_bias_files = (data_dir / "stereoset" / "dev.json").is_file() and (data_dir / "winobias").is_dir()
    batches = [EvalBatch("toxicity", ["compfair_toxicity"], data_env),
               EvalBatch("bias", ["compfair_bias", *EXTRA_TASKS], data_env if has_bias_files else {}),
               EvalBatch("perplexity", ["wikitext"], causal_only=True)]
    return Plan("reproduce", runs, data_dir, models, batches, shlex.split(args.lm_eval_launcher),
                ["--device", args.device, "--batch_size", args.batch_size], args.model_args, prompts,
                env={"COMPFAIR_SCORER": args.scorer} if args.scorer else {})


def demo_plan(args: argparse.Namespace) -> Plan:
    runs = Path(args.runs).resolve()
    data_dir = runs / "data"
    teacher = runs / "teacher"
    scorer = runs / "scorer" / "tiny-detoxify.ckpt"
    corpus = data_dir / "corpus.txt"
    cpu = ["--use_cpu", "true", "--bf16", "false", "--preprocessing_num_workers", "1",
           "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true"]
    models = [Model("teacher", "teacher", str(teacher), done_file="teacher.json")]
    for student in STUDENTS:
        out = runs / "students" / student
        models.append(Model(student, "student", str(out), done_file="distillation.json", build=Step(
            "compress.distill", [
                f"trainer_configs/distill/{student}.yaml", "--teacher_name_or_path", str(teacher),
                "--train_file", str(corpus), "--dataset_fraction", "1", "--validation_split_percentage", "10",
                "--max_eval_samples", "128", "--block_size", str(args.block_size),
                "--max_steps", str(args.distill_steps),
                "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "3e-3",
                "--warmup_steps", "0", "--eval_strategy", "no", "--save_strategy", "no",
                "--load_best_model_at_end", "false", "--logging_steps", str(max(1, args.distill_steps // 4)),
                "--output_dir", str(out), *cpu], script=True)))
    for subset in args.prune_samples:
        out = runs / "pruned" / f"pruned_{subset}"
        models.append(Model(f"pruned_{subset}", "pruned", str(out), done_file="pruning.json", build=Step(
            "compress.prune", [
                "trainer_configs/prune/wikitext_256.yaml", "--model_name_or_path", str(teacher),
                "--train_file", str(corpus), "--validation_split_percentage", "10", "--max_eval_samples", "128",
                "--block_size", str(args.block_size), "--num_samples", str(subset),
                "--per_device_eval_batch_size", "16",
                "--output_dir", str(out), *cpu], script=True)))
    # Post-training compression of the teacher, calibrated on the demo corpus (n_embd 96: six groups of 16 inputs).
    calibration = ["--train_file", str(corpus), "--block_size", str(args.block_size), "--num_samples", "16",
                   "--validation_split_percentage", "10"]
    out = runs / "quantized" / "gptq_int4"
    models.append(Model("gptq_int4", "quantized", str(out), done_file="quantization.json", build=Step(
        "compress.quantize", ["--model_name_or_path", str(teacher), "--output_dir", str(out), "--method", "gptq",
                              "--bits", "4", "--group_size", "16", *calibration], script=True)))
    out = runs / "sparse" / "wanda_2of4"
    models.append(Model("wanda_2of4", "sparse", str(out), done_file="sparsity.json", build=Step(
        "compress.sparsify", ["--model_name_or_path", str(teacher), "--output_dir", str(out), "--method", "wanda",
                              "--pattern", "2:4", *calibration], script=True)))
    source = resources.files("compress.study") / "demo_data"
    prompts = [
        Step("compress.toxicity.prompts", ["rtp", "--source", str(source / "rtp_prompts.jsonl"), "--out", str(data_dir),
                                  "--n", str(args.rtp_prompts), "--tokenizer", str(teacher)]),
        Step("compress.toxicity.prompts", ["tccc", "--source", str(source / "tccc_train.csv"), "--out", str(data_dir),
                                  "--n", str(args.tccc_prompts), "--tokenizer", str(teacher),
                                  "--scorer", f"detoxify:{scorer}", "--safe-threshold", "0.05"]),
    ]
    perplexity_task = runs / "tasks" / "compfair_demo_perplexity.yaml"
    batches = [EvalBatch("all", ["compfair_toxicity", "compfair_bias", *EXTRA_TASKS, str(perplexity_task)],
                         {"COMPFAIR_DATA_DIR": str(data_dir)})]
    return Plan("demo", runs, data_dir, models, batches, [sys.executable], ["--device", "cpu", "--batch_size", "64"],
                "dtype=float32", prompts, in_process=not args.subprocess,
                env={"COMPFAIR_SCORER": f"detoxify:{scorer},detoxify:{runs / 'scorer_b' / 'tiny-detoxify.ckpt'}",
                     "COMPFAIR_REGARD_SCORER": f"hf:{scorer.parent / 'tiny-regard'}", "HF_HUB_OFFLINE": "1",
                     "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     **demo_threads(args.threads)})


# ---------------------------------------------------------------------------------------------- modern preset

# `--study modern`: one configurable modern teacher through every method at two or three strengths. Each row:
# model name, kind, the module that builds it, its config (the paper's, with the teacher and strength given as
# flags), and the strength's flags; {half} is half the teacher's depth, {drop} the blocks removed to get there.
MODERN_TEACHER = "Qwen/Qwen2.5-0.5B"
MODERN_PRESET = (
    ("distill_half", "student", "compress.distill", "trainer_configs/distill/B.yaml", ["--student_layers", "{half}"]),
    ("drop_angular_half", "dropped", "compress.drop_layers",
     "trainer_configs/drop_layers/gpt2_angular_distance_6.yaml", ["--num_blocks_to_drop", "{drop}"]),
    ("drop_influence_half", "dropped", "compress.drop_layers",
     "trainer_configs/drop_layers/gpt2_block_influence_6.yaml", ["--num_blocks_to_drop", "{drop}"]),
    ("prune_5pct_x3", "pruned", "compress.prune", "trainer_configs/prune/wikitext_2560.yaml",
     ["--prune_fraction", "0.05", "--iterations", "3"]),
    ("prune_10pct_x5", "pruned", "compress.prune", "trainer_configs/prune/wikitext_2560.yaml",
     ["--prune_fraction", "0.1", "--iterations", "5"]),
    ("magnitude_50", "sparse", "compress.sparsify", "trainer_configs/sparsify/magnitude_50.yaml", []),
    ("wanda_50", "sparse", "compress.sparsify", "trainer_configs/sparsify/wanda_50.yaml", []),
    ("magnitude_2of4", "sparse", "compress.sparsify", "trainer_configs/sparsify/magnitude_2of4.yaml", []),
    ("wanda_2of4", "sparse", "compress.sparsify", "trainer_configs/sparsify/wanda_2of4.yaml", []),
    ("int8", "quantized", "compress.quantize", "trainer_configs/quantize/int8.yaml", []),
    ("int4", "quantized", "compress.quantize", "trainer_configs/quantize/int4.yaml", []),
    ("gptq_int4", "quantized", "compress.quantize", "trainer_configs/quantize/gptq.yaml", []),
)
# Block counts of the hub teachers the preset names, so planning needs no download; others are read from their config.
MODERN_KNOWN_BLOCKS = {"Qwen/Qwen2.5-0.5B": 24, "Qwen/Qwen2.5-0.5B-Instruct": 24, "meta-llama/Llama-3.2-1B": 16}
MODERN_RECORDS = {"student": "distillation.json", "dropped": "layer_dropping.json", "pruned": "pruning.json",
                  "sparse": "sparsity.json", "quantized": "quantization.json"}
MODERN_FOLDERS = {"student": "students", "dropped": "dropped", "pruned": "pruned", "sparse": "sparse",
                  "quantized": "quantized"}
# The trainers (distill, drop_layers, prune) run under accelerate in reproduce; quantize and sparsify in one process.
MODERN_ACCELERATED = ("compress.distill", "compress.drop_layers", "compress.prune")


def _modern_teacher_blocks(teacher: str, given: int | None) -> int:
    """The teacher's block count: given, known, or read from its config; one-line error otherwise."""
    if given is not None:
        blocks = given
    elif teacher in MODERN_KNOWN_BLOCKS:
        blocks = MODERN_KNOWN_BLOCKS[teacher]
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(teacher)
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: --teacher {teacher}: cannot read its config ({str(err).splitlines()[0]}); "
                             "pass --teacher-blocks N") from None
        blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        if not isinstance(blocks, int):
            raise SystemExit(f"error: --teacher {teacher}: its config names no block count; pass --teacher-blocks N")
    if blocks < 2:
        raise SystemExit(f"error: --teacher {teacher} has {blocks} block(s): half depth needs at least 2")
    return blocks


def modern_models(teacher: Model, blocks: int, root: Path, launch: list[str],
                  extra: dict[str, list[str]] | None = None) -> list[Model]:
    """The teacher and one model per MODERN_PRESET row, each built from `teacher.pretrained` into ROOT/<kind>/<name>.

    `extra` adds flags per module (the demo's data, step counts and CPU settings)."""
    half = blocks // 2
    fill = {"{half}": str(half), "{drop}": str(blocks - half)}
    models = [teacher]
    for name, kind, module, config, flags in MODERN_PRESET:
        out = root / MODERN_FOLDERS[kind] / name
        source = "--teacher_name_or_path" if kind == "student" else "--model_name_or_path"
        argv = [config, source, teacher.pretrained, *(fill.get(f, f) for f in flags), "--output_dir", str(out),
                *(extra or {}).get(module, []), *(extra or {}).get(name, [])]
        models.append(Model(name, kind, str(out), done_file=MODERN_RECORDS[kind], build=Step(
            module, argv, launch if module in MODERN_ACCELERATED else [sys.executable], script=True)))
    return models


def _slug(model: str) -> str:
    return Path(model.rstrip("/")).name or model


def modern_reproduce_plan(args: argparse.Namespace) -> Plan:
    """The modern preset on real models: the paper's prompts, tasks and settings, MODERN_PRESET's models of one
    teacher, written to RUNS/modern/<teacher> (the prompts stay in the shared data dir)."""
    plan = reproduce_plan(args)
    blocks = _modern_teacher_blocks(args.teacher, args.teacher_blocks)
    plan.runs = Path(args.runs) / "modern" / _slug(args.teacher)
    plan.models = modern_models(Model(_slug(args.teacher), "teacher", args.teacher), blocks, plan.runs,
                                _launcher(args.accelerate_config))
    plan.study = "modern"
    return plan


def modern_demo_plan(args: argparse.Namespace) -> Plan:
    """The modern preset scaled down on the demo's tiny 12-block GPT-2 teacher, its data and its settings."""
    plan = demo_plan(args)
    runs, teacher = Path(plan.runs), plan.models[0]
    corpus = str(plan.data_dir / "corpus.txt")
    cpu = ["--use_cpu", "true", "--bf16", "false", "--preprocessing_num_workers", "1",
           "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true"]
    data = ["--train_file", corpus, "--validation_split_percentage", "10", "--block_size", str(args.block_size)]
    calibration = [*data, "--num_samples", "16"]
    extra = {
        "compress.distill": [*data, "--dataset_fraction", "1", "--max_steps", str(args.distill_steps),
                             "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                             "--learning_rate", "3e-3", "--warmup_steps", "0", "--eval_strategy", "no",
                             "--save_strategy", "no", "--load_best_model_at_end", "false",
                             "--logging_steps", str(max(1, args.distill_steps // 4)),
                             *cpu],
        "compress.drop_layers": [*calibration, "--per_device_eval_batch_size", "16", *cpu],
        "compress.prune": [*data, "--num_samples", str(args.prune_samples[0]), "--per_device_eval_batch_size", "16",
                           *cpu],
        "compress.sparsify": calibration,
        "compress.quantize": calibration,
        # n_embd 96: six groups of 16 inputs
        "int4": ["--group_size", "16"], "gptq_int4": ["--group_size", "16"],
    }
    plan.models = modern_models(teacher, DEMO_TEACHER_BLOCKS, runs, [sys.executable], extra)
    plan.study = "modern"
    return plan


DEMO_TEACHER_BLOCKS = TeacherRecipe.n_layer


def build_plan(args: argparse.Namespace) -> Plan:
    if getattr(args, "study", "paper") == "modern":
        return modern_demo_plan(args) if args.plan == "demo" else modern_reproduce_plan(args)
    return demo_plan(args) if args.plan == "demo" else reproduce_plan(args)


# ---------------------------------------------------------------------------------------------- stages


def stage_teacher(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    if plan.name != "demo":
        log("teacher: the teacher and the Detoxify scorer come from the hub; nothing to build")
        return
    from compress.common import tiny_models

    scorer = plan.runs / "scorer" / "tiny-detoxify.ckpt"
    if not scorer.is_file():  # the checkpoint is written after its config and tokenizer
        log("teacher: building the tiny Detoxify-format scorer")
        # Built in place: the checkpoint names its own folder as the model type, so it cannot move.
        tiny_models.build_tiny_detoxify(scorer.parent.resolve())
    second = plan.runs / "scorer_b" / "tiny-detoxify.ckpt"
    if not second.is_file():  # a second scorer (another seed), so the report can compare models' rankings
        log("teacher: building a second tiny Detoxify-format scorer")
        tiny_models.build_tiny_detoxify(second.parent.resolve(), seed=1)
    regard = plan.runs / "scorer" / "tiny-regard"
    if not (regard / "tokenizer_config.json").is_file():  # BOLD's regard classifier (written last: the tokenizer)
        tiny_models.build_tiny_regard(regard)
    from compress.study import demo_teacher

    corpus, heldout = demo_teacher.write_demo_text(plan.data_dir)
    teacher = next(m for m in plan.models if m.kind == "teacher")
    if (Path(teacher.pretrained) / "teacher.json").is_file():
        log(f"teacher: {teacher.pretrained} is complete; skipped")
        return
    recipe = TeacherRecipe(steps=args.teacher_steps)
    log(f"teacher: training a {recipe.n_layer}-block, {recipe.n_head}-head GPT-2 on the bundled WikiText-2 text "
        f"for {recipe.steps} steps (about a minute on two cores)")
    demo_teacher.train_demo_teacher(Path(teacher.pretrained), corpus, heldout, recipe, log=log)


def _write_evaluation_data(plan: Plan) -> None:
    """The bundled StereoSet and WinoBias samples in the layout the tasks read, the held-out text, and the
    perplexity task that reads it. Rewritten on every run: they are small and come from the package."""
    source = resources.files("compress.study") / "demo_data"
    data = plan.data_dir
    data.mkdir(parents=True, exist_ok=True)
    for sub in ("stereoset", "winobias", *EXTRA_DEMO_DATA):
        (data / sub).mkdir(exist_ok=True)
        for item in (source / sub).iterdir():
            if item.is_file():
                (data / sub / item.name).write_bytes(item.read_bytes())
    task = plan.runs / "tasks" / "compfair_demo_perplexity.yaml"
    task.parent.mkdir(parents=True, exist_ok=True)
    # lm-eval's rolling log-likelihood gives word and byte perplexity on the demo's held-out text,
    # the same measurement as its `wikitext` task in `make reproduce`.
    task.write_text(
        "task: compfair_demo_perplexity\n"
        "dataset_path: text\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str((data / 'heldout.txt').resolve()))}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n", encoding="utf-8")


def prompts_complete(plan: Plan) -> bool:
    return all((plan.data_dir / name).is_file() for name in PROMPT_FILES)


def stage_prompts(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    if plan.name == "demo":
        _write_evaluation_data(plan)
    if prompts_complete(plan):
        log(f"prompts: {plan.data_dir} is complete; skipped")
        return
    if plan.name == "reproduce" and not args.tccc_train:
        raise SystemExit("error: the TCCC prompt sets need the Jigsaw Toxic Comment Classification Challenge "
                         "train.csv (Kaggle: jigsaw-toxic-comment-classification-challenge); pass --tccc-train "
                         "PATH (make reproduce TCCC_SOURCE=PATH)")
    if plan.name == "demo" and not (plan.runs / "teacher" / "teacher.json").is_file():
        raise SystemExit("error: the demo's prompts are cut with the demo teacher's tokenizer; run the teacher "
                         "stage first")
    for i, step in enumerate(plan.prompt_steps, 1):
        run_step(step, f"prompts ({i} of {len(plan.prompt_steps)})", plan.env, plan.in_process)


def _build_stage(kind: str, plan: Plan, models: list[Model]) -> None:
    todo = [m for m in models if m.kind == kind]
    for i, model in enumerate(todo, 1):
        verb = {"student": "distill", "pruned": "prune", "quantized": "quantize", "sparse": "sparsify",
                "dropped": "drop layers of"}[kind]
        what = f"{verb} {model.name} ({i} of {len(todo)})"
        if (Path(model.pretrained) / model.done_file).is_file():
            log(f"{what}: {model.pretrained} is complete; skipped")
            continue
        run_step(model.build, what, plan.env, plan.in_process)


def stage_distill(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    _build_stage("student", plan, models)


def stage_prune(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    _build_stage("pruned", plan, models)


def stage_drop_layers(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    _build_stage("dropped", plan, models)


def stage_quantize(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    _build_stage("quantized", plan, models)


def stage_sparsify(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    _build_stage("sparse", plan, models)


def eval_complete(plan: Plan, model: Model, batch: EvalBatch) -> bool:
    marker = plan.eval_root / model.name / EVAL_MARKER.format(batch=batch.label)
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text(encoding="utf-8"))
    return record.get("tasks") == batch.tasks and record.get("pretrained") == model.pretrained


def stage_evaluate(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    units = [(m, b) for m in models for b in plan.eval_batches if not (b.causal_only and m.backend != "causal")]
    for i, (model, batch) in enumerate(units, 1):
        what = f"evaluate {model.name} on {batch.label} ({i} of {len(units)})"
        if eval_complete(plan, model, batch):
            log(f"{what}: complete; skipped")
            continue
        if model.done_file and not (Path(model.pretrained) / model.done_file).is_file():
            raise SystemExit(f"error: {what}: {model.pretrained} is not built yet; run the "
                             f"{'teacher' if model.kind == 'teacher' else 'distill or prune'} stage first")
        out = plan.eval_root / model.name
        model_args = f"pretrained={model.pretrained}" + (",backend=seq2seq" if model.backend == "seq2seq" else "")
        model_args += "".join(f",{extra}" for extra in (model.model_args, plan.model_args) if extra)
        step = Step("lm_eval", ["--include_path", str(REPO / "lm_eval_tasks"), "--tasks", ",".join(batch.tasks),
                                "--model", "hf", "--model_args", model_args, *plan.lm_eval_args, "--log_samples",
                                "--output_path", str(out)], plan.lm_eval_launcher)
        run_step(step, what, {**plan.env, **batch.env}, plan.in_process)
        write_json_atomically(out / EVAL_MARKER.format(batch=batch.label),
                              {"tasks": batch.tasks, "pretrained": model.pretrained, "command": step.command(),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stage_report(plan: Plan, args: argparse.Namespace, models: list[Model]) -> None:
    evaluated = [m for m in plan.models if any(eval_complete(plan, m, b) for b in plan.eval_batches)]
    if not evaluated:
        raise SystemExit(f"error: no evaluated model under {plan.eval_root}; run the evaluate stage first")
    names = {m.name for m in evaluated}
    argv = [*(str(plan.eval_root / m.name) for m in evaluated), "--out", str(plan.report_dir)]
    for m in evaluated:
        if m.compare_with in names:
            argv += ["--compare", f"{m.name}={m.compare_with}"]
        if m.distilled:
            argv += ["--distilled", m.name]
    if args.resamples:
        argv += ["--resamples", str(args.resamples)]
    run_step(Step("compress.report.cli", argv), f"report on {len(evaluated)} models", plan.env, plan.in_process)
    log(f"report: open {plan.report_dir / 'report.html'} (or summary.md beside it)")


STAGE_FUNCTIONS = {"teacher": stage_teacher, "prompts": stage_prompts, "distill": stage_distill,
                   "prune": stage_prune, "drop_layers": stage_drop_layers, "quantize": stage_quantize,
                   "sparsify": stage_sparsify,
                   "evaluate": stage_evaluate, "report": stage_report}


# ---------------------------------------------------------------------------------------------- CLI


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m compress.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", choices=("reproduce", "demo"), help="the paper's study, or the offline demo")
    parser.add_argument("--runs", default=None, help="where everything is written (default runs, or runs/demo)")
    parser.add_argument("--stages", type=_names, default=list(STAGES), help=f"comma-separated from {','.join(STAGES)}")
    parser.add_argument("--models", type=_names, default=None, help="comma-separated model names (default: all)")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap/permutation resamples for the report")
    real = parser.add_argument_group("reproduce")
    real.add_argument("--data-dir", default=None, help="prompt data dir (default RUNS/prompts)")
    real.add_argument("--tccc-train", default=None, help="the Jigsaw TCCC train.csv (Kaggle)")
    real.add_argument("--rtp-source", default="allenai/real-toxicity-prompts", help="RTP hub name or prompts.jsonl")
    real.add_argument("--accelerate-config", default="trainer_configs/accelerate/single_gpu.yaml",
                      help="accelerate config for the trainers")
    real.add_argument("--lm-eval-launcher", default=shlex.quote(sys.executable),
                      help="what runs `-m lm_eval`, e.g. 'accelerate launch' for data-parallel evaluation")
    real.add_argument("--device", default="cuda:0")
    real.add_argument("--batch-size", default="auto")
    real.add_argument("--model-args", default="dtype=auto", help="extra lm-eval model_args for every model")
    real.add_argument("--scorer", default=None, help="COMPFAIR_SCORER (default: the tasks' default, detoxify:original)")
    modern = parser.add_argument_group("modern preset (--study modern)")
    modern.add_argument("--study", choices=("paper", "modern"), default="paper",
                        help="the paper's study (default) or the modern preset: one teacher through every method")
    modern.add_argument("--teacher", default=MODERN_TEACHER, help="the modern preset's teacher (hub id or folder; "
                        "reproduce only, the demo uses its tiny GPT-2)")
    modern.add_argument("--teacher-blocks", type=int, default=None,
                        help="its block count (default: known for the preset's hub teachers, else from its config)")
    demo = parser.add_argument_group("demo (sizes of the embedded default)")
    demo.add_argument("--teacher-steps", type=int, default=TeacherRecipe.steps)
    demo.add_argument("--distill-steps", type=int, default=60)
    demo.add_argument("--prune-samples", type=_sizes, default=[8],
                      help="importance blocks per pruned model, e.g. 8,32 (reproduce: the paper's five sizes)")
    demo.add_argument("--block-size", type=int, default=32)
    demo.add_argument("--rtp-prompts", type=int, default=16)
    demo.add_argument("--tccc-prompts", type=int, default=16)
    demo.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                      help="CPU threads per step (default: every core; 1 on a busy machine)")
    demo.add_argument("--subprocess", action="store_true",
                      help="run each step in its own process, as reproduce does (default: all in this process)")
    args = parser.parse_args(argv)
    args.runs = args.runs or ("runs" if args.plan == "reproduce" else
                              "runs/demo_modern" if args.study == "modern" else "runs/demo")
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1 CPU thread")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan == "demo":
        args.accelerate_config = None
    plan = build_plan(args)
    if plan.in_process:
        # Steps run here: their environment must be in place before torch, datasets or the hub client load.
        os.environ.update(plan.env)
        import torch

        torch.set_num_threads(args.threads)  # as demo_threads does for subprocesses
    models = plan.models
    if args.models is not None:
        known = {m.name for m in plan.models}
        unknown = [name for name in args.models if name not in known]
        if unknown:
            raise SystemExit(f"error: unknown model(s) {', '.join(unknown)} for {plan.name}; "
                             f"choose from {', '.join(m.name for m in plan.models)}")
        models = [m for m in plan.models if m.name in args.models]
    stages = [s for s in STAGES if s in args.stages]
    started = time.monotonic()
    for i, stage in enumerate(stages, 1):
        log(f"stage {i} of {len(stages)}: {stage}")
        STAGE_FUNCTIONS[stage](plan, args, models)
    log(f"{plan.name}: {', '.join(stages)} finished in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
