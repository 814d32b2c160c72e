"""Read what lm-eval wrote with `--output_path DIR --log_samples`, plus what the trainers wrote beside each model.

lm-eval writes `DIR/<sanitized model name>/results_<date>.json` (task and group metrics, the model's
arguments and parameter count) and, with `--log_samples`, `samples_<task>_<date>.jsonl` beside it
(one record per document: its values for every metric, under the metric's name). A model evaluated
several times, or on different tasks at different times, has several results files: for each task
the newest file that holds it wins. The model's own folder (`pretrained=` in the model arguments) may
hold `distillation.json`, `pruning.json` or `layer_dropping.json`, written by `compress/distill.py`,
`compress/prune.py` and `compress/drop_layers.py` (quantization.json, sparsity.json by the post-training
scripts, teacher.json by the study for a teacher it trained); they say how the model was made.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

RESULT_GLOB = "results_*.json"
NOT_METRICS = {"alias", "name", "sample_len", "samples", " "}
TRAINER_RECORDS = ("distillation.json", "pruning.json", "quantization.json", "sparsity.json",
                   "layer_dropping.json", "teacher.json")


@dataclass
class TaskResult:
    """One task's (or group's) metrics for one model, and where they came from."""

    task: str
    metrics: dict[tuple[str, str], float]  # (metric, filter) -> value
    stderr: dict[tuple[str, str], float]
    results_file: Path
    samples_file: Path | None  # None for groups and runs without --log_samples
    is_group: bool = False
    n_samples: int | None = None

    def filters(self, metric: str) -> list[str]:
        return [f for m, f in self.metrics if m == metric]


@dataclass
class ModelRun:
    """Everything the report knows about one model."""

    name: str
    model: str  # the `pretrained=` argument (hub name or path) or lm-eval's model name
    model_args: dict
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    num_parameters: int | None = None  # as lm-eval counted them
    config: dict | None = None  # the checkpoint's config.json, where it is a local folder
    distillation: dict | None = None
    pruning: dict | None = None
    quantization: dict | None = None  # quantization.json of compress/quantize.py
    sparsity: dict | None = None  # sparsity.json of compress/sparsify.py
    layer_dropping: dict | None = None  # compress/drop_layers.py's record
    teacher: dict | None = None  # teacher.json: how the study trained a model from scratch (the demo's teacher)
    record_files: list[Path] = field(default_factory=list)

    @property
    def results_files(self) -> list[Path]:
        return sorted({t.results_file for t in self.tasks.values()})


def parse_model_args(model_args) -> dict:
    """lm-eval stores model arguments as a dict (0.4.9+) or as `key=value,key=value` (older)."""
    if isinstance(model_args, dict):
        return model_args
    if not model_args:
        return {}
    pairs = [part.split("=", 1) for part in str(model_args).split(",") if "=" in part]
    return {key.strip(): value.strip() for key, value in pairs}


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _task_metrics(entry: dict) -> tuple[dict, dict]:
    metrics, stderr = {}, {}
    for key, value in entry.items():
        if key in NOT_METRICS or "," not in key:
            continue
        metric, filter_name = key.rsplit(",", 1)
        number = _number(value)
        if metric.endswith("_stderr"):
            if number is not None:
                stderr[(metric[: -len("_stderr")], filter_name)] = number
        elif number is not None:
            metrics[(metric, filter_name)] = number
    return metrics, stderr


def _date_id(results_file: Path) -> str:
    return results_file.stem[len("results_"):]


def read_results_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path} is not a readable lm-eval results file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise SystemExit(f"error: {path} has no 'results' mapping; expected a results_*.json written by "
                         "lm_eval --output_path")
    return data


def _model_key(data: dict) -> tuple[str, dict]:
    config = data.get("config") or {}
    model_args = parse_model_args(config.get("model_args"))
    model = model_args.get("pretrained") or data.get("model_name") or config.get("model") or "unknown"
    return str(model), model_args


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _attach_model_files(run: ModelRun, search_dirs: list[Path]) -> None:
    """config.json and the trainer's record, from the model's folder or beside the results."""
    model_dir = Path(run.model).expanduser()
    folders = ([model_dir] if model_dir.is_dir() else []) + search_dirs
    # A pruned model's compact form lies in a subfolder of the run that wrote pruning.json.
    parent_record = model_dir.parent / "pruning.json"
    if model_dir.is_dir() and parent_record.is_file():
        forms = (_read_json(parent_record) or {}).get("saved_forms") or {}
        if model_dir.name in forms.values():
            folders.insert(1, model_dir.parent)
    for folder in folders:
        for record in TRAINER_RECORDS:
            path = folder / record
            attribute = record.removesuffix(".json")
            if getattr(run, attribute) is None and path.is_file():
                data = _read_json(path)
                if data is not None:
                    setattr(run, attribute, data)
                    run.record_files.append(path)
    if model_dir.is_dir() and (model_dir / "config.json").is_file():
        run.config = _read_json(model_dir / "config.json")


def _samples_file(results_file: Path, task: str) -> Path | None:
    path = results_file.parent / f"samples_{task}_{_date_id(results_file)}.jsonl"
    return path if path.is_file() else None


def find_model_runs(results_dirs: list[str | Path]) -> list[ModelRun]:
    """Every model found under the given lm-eval output directories, newest result per task."""
    runs: dict[str, ModelRun] = {}
    dir_of: dict[str, Path] = {}
    models_per_dir: dict[Path, set[str]] = {}
    for results_dir in map(Path, results_dirs):
        if not results_dir.exists():
            raise SystemExit(f"error: results directory {results_dir} not found")
        files = sorted(results_dir.rglob(RESULT_GLOB)) if results_dir.is_dir() else [results_dir]
        if not files:
            raise SystemExit(f"error: no {RESULT_GLOB} under {results_dir}; run lm_eval with --output_path "
                             f"{results_dir} (and --log_samples for intervals and paired tests)")
        # Oldest first, so a newer file overwrites a task it shares with an older one.
        dated = sorted((_date_id(f), f, read_results_file(f)) for f in files)
        for _, path, data in dated:
            model, model_args = _model_key(data)
            models_per_dir.setdefault(results_dir, set()).add(model)
            run = runs.get(model)
            if run is None:
                run = runs[model] = ModelRun(name=model, model=model, model_args=model_args)
                dir_of[model] = results_dir
            run.model_args = model_args
            params = (data.get("config") or {}).get("model_num_parameters")
            if isinstance(params, int) and params > 0:
                run.num_parameters = params
            groups = set(data.get("group_subtasks") or {}) | set(data.get("groups") or {})
            entries = {**data["results"], **(data.get("groups") or {})}
            n_samples = data.get("n-samples") or {}
            for task, entry in entries.items():
                if not isinstance(entry, dict):
                    continue
                metrics, stderr = _task_metrics(entry)
                if not metrics:
                    continue
                is_group = task in groups
                effective = (n_samples.get(task) or {}).get("effective")
                run.tasks[task] = TaskResult(task, metrics, stderr, path,
                                             None if is_group else _samples_file(path, task), is_group,
                                             effective if isinstance(effective, int) else None)
    for model, run in runs.items():
        results_dir = dir_of[model]
        run.name = _display_name(model, results_dir, len(models_per_dir[results_dir]))
        search = sorted({results_dir, *(f.parent for f in run.results_files)})
        _attach_model_files(run, search)
    _make_names_unique(list(runs.values()))
    return list(runs.values())


def _display_name(model: str, results_dir: Path, models_in_dir: int) -> str:
    """A directory holding one model's results names it (`runs/eval/A` -> A); otherwise the model does."""
    if models_in_dir == 1 and results_dir.is_dir():
        return results_dir.resolve().name
    return model.rstrip("/").split("/")[-1] or model


def _make_names_unique(runs: list[ModelRun]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name}-{count + 1}"


def read_doc_values(samples_file: Path, filter_name: str) -> dict[str, dict]:
    """Per-document records of one filter: {doc key: {metric: value}} from a samples_*.jsonl file.

    A document is keyed by its id and the hash of its content, so two models are paired only on
    the very same document. The records come back in `doc_id` order, not file order: a data-parallel run
    writes each process's share in turn, and the bootstrap must resample the same documents the same way.
    """
    docs: dict[str, dict] = {}
    with open(samples_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SystemExit(f"error: {samples_file}:{line_number} is not JSON; the file is truncated or not "
                                 "an lm-eval samples file") from None
            if record.get("filter", "none") != filter_name:
                continue
            key = f"{record.get('doc_id')}:{record.get('doc_hash', '')}"
            docs[key] = {m: record[m] for m in record.get("metrics", []) if m in record}
    return dict(sorted(docs.items(), key=lambda item: _doc_order(item[0])))


def _doc_order(key: str) -> tuple:
    doc_id = key.split(":", 1)[0]
    return (0, int(doc_id), key) if doc_id.lstrip("-").isdigit() else (1, 0, key)
