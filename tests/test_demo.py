"""`make demo`'s pipeline, scaled down, end to end through the real tasks on tiny models built on the spot; and
the study's plans and command line.

The pipeline runs once per module, in its own process as `make demo` runs it: a tiny teacher, two students, one
pruned model, every toxicity and bias task through lm-eval, and the report. The tests then trace every number in
summary.csv back to the file it came from.
"""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from compress.study import runner as study

REPO = Path(__file__).resolve().parents[1]
DEMO_MODELS = ("teacher", "A", "Dnot", "pruned_8")
# One thread: on a busy machine (a test run beside other work) torch's two-thread steps wait on each other.
SCALED_DOWN = ["--threads", "1", "--teacher-steps", "30", "--distill-steps", "5", "--prune-samples", "8",
               "--rtp-prompts", "6", "--tccc-prompts", "6", "--resamples", "400", "--models", ",".join(DEMO_MODELS)]


def _study(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "compress.study", "demo", "--runs", str(runs), *SCALED_DOWN, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    runs = tmp_path_factory.mktemp("demo")
    result = _study(runs)
    assert result.returncode == 0, result.stderr[-4000:]
    return runs, result.stderr


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_demo_report_has_a_row_for_every_model_it_built(demo):
    runs, log = demo
    rows = {row["model"]: row for row in _rows(runs / "report" / "summary.csv")}
    assert set(rows) == set(DEMO_MODELS)
    assert rows["A"]["method"] == "distillation" and rows["A"]["init"] == "teacher"
    assert rows["Dnot"]["init"] == "random" and rows["pruned_8"]["method"] == "head pruning"
    # The tiny teacher has the paper's 12 x 12 heads, so 3 pruning iterations at 5% leave the paper's 122.
    assert rows["teacher"]["heads"] == "144" and rows["pruned_8"]["heads"] == "122"
    assert {rows[m]["baseline"] for m in ("A", "Dnot", "pruned_8")} == {"teacher"}
    for stage in study.STAGES:
        assert f"stage {study.STAGES.index(stage) + 1} of {len(study.STAGES)}: {stage}" in log
    summary = (runs / "report" / "summary.md").read_text()
    assert "## What is significant" in summary and "**A** vs **teacher**" in summary
    # the report sections of the evaluation beyond the paper (two scorers: the demo's second Detoxify seed)
    for section in ("## Item-level flips", "## Toxicity scorer robustness", "## Length control",
                    "### compfair_crows_pairs", "### compfair_bold_gender"):
        assert section in summary, section
    assert "detoxify_scorer_tiny_detoxify" in summary and "detoxify_scorer_b_tiny_detoxify" in summary
    for plot in ("toxicity.png", "bias_counts.png", "perplexity.png", "perplexity_vs_metrics.png",
                 "generation_length.png"):
        assert (runs / "report" / "plots" / plot).stat().st_size > 5000


def _results_value(results: dict, column: str) -> float | None:
    task, _, metric = column.partition("/")
    entry = results["results"].get(task) or (results.get("groups") or {}).get(task) or {}
    matches = [v for k, v in entry.items() if k.split(",")[0] == metric and "," in k]
    return matches[0] if len(matches) == 1 else None


@pytest.mark.slow
def _stereoset_overall(sources: list[Path], metric: str) -> float:
    """StereoSet's official counting (per target term, then averaged) over both splits' logged items."""
    items = []
    for task in ("compfair_stereoset_intrasentence", "compfair_stereoset_intersentence"):
        files = {f for p in sources for f in p.parent.glob(f"samples_{task}_*.jsonl")}
        newest = sorted(files)[-1]
        items += [json.loads(line)["ss"] for line in newest.read_text().splitlines() if line.strip()]
    terms = {}
    for it in items:
        t = terms.setdefault(it["target"], [0, 0, 0])
        t[0] += it["stereotype"] > it["anti-stereotype"]
        t[1] += (it["stereotype"] > it["unrelated"]) + (it["anti-stereotype"] > it["unrelated"])
        t[2] += 1
    ss = sum(100.0 * a / n for a, _, n in terms.values()) / len(terms)
    lms = sum(100.0 * r / (2.0 * n) for _, r, n in terms.values()) / len(terms)
    return {"ss": ss, "lms": lms, "icat": lms * min(ss, 100 - ss) / 50.0}[metric]


def test_every_number_in_summary_csv_traces_back_to_its_source_file(demo):
    runs, _ = demo
    rows = _rows(runs / "report" / "summary.csv")
    checked = 0
    for row in rows:
        sources = [Path(p) for p in row["results_files"].split(";")]
        results = [json.loads(p.read_text()) for p in sources if p.name.startswith("results_")]
        assert results, row["model"]
        record = {}
        for p in sources:
            if p.name in ("distillation.json", "pruning.json"):
                record = json.loads(p.read_text())
        config = json.loads((Path(row["pretrained"]) / "config.json").read_text())
        for column, cell in row.items():
            if cell in ("", None) or column in ("model", "method", "baseline", "init", "pretrained",
                                                "results_files", "perplexity_source"):
                continue
            if column in ("head_importance", "bias_chosen_on", "evaluated_on_choosing_data"):
                # words from pruning.json: the demo prunes by loss and chooses on no bias data
                assert (column, cell) == ("head_importance", record.get("importance", "loss")), (column, cell)
                continue
            value = float(cell)
            if column == "parameters":
                expected = (record.get("student_parameters") or (record.get("parameter_count") or {}).get("pruned")
                            or results[0]["config"]["model_num_parameters"])
            elif column == "blocks":
                expected = record.get("student_layers", config["n_layer"])
            elif column == "heads":
                expected = (record.get("heads_per_iteration") or [config["n_layer"] * config["n_head"]])[-1]
            elif column == "trainer_perplexity":
                expected = record.get("perplexity") or record["perplexity_per_iteration"][-1]
            elif column == "prune_subset":
                expected = record["num_samples"]
            elif column == "perplexity":
                assert row["perplexity_source"] == "lm-eval compfair_demo_perplexity word_perplexity"
                expected = _results_value(results[0], "compfair_demo_perplexity/word_perplexity")
            elif column.endswith((" ci_low", " ci_high")):
                point = float(row[column.rsplit(" ", 1)[0]])
                assert (value <= point + 1e-9) if column.endswith("ci_low") else (value >= point - 1e-9), column
                checked += 1
                continue
            elif column.startswith("compfair_stereoset_overall/"):  # computed by the report from both splits' samples
                expected = _stereoset_overall(sources, column.split("/", 1)[1])
                # the same sums over the target terms in another order: equal to the last bits
                assert value == pytest.approx(expected, rel=1e-13), f"{row['model']}: {column}"
                checked += 1
                continue
            else:
                found = [v for v in (_results_value(r, column) for r in results) if v is not None]
                assert found, f"{row['model']}: {column} is in no results file"
                expected = found[0]
            assert value == expected, f"{row['model']}: {column} = {value}, source says {expected}"
            checked += 1
    assert checked > 100 * len(rows)


@pytest.mark.slow
def test_comparisons_pair_each_model_with_the_teacher_on_the_same_documents(demo):
    runs, _ = demo
    rows = _rows(runs / "report" / "comparisons.csv")
    assert {r["model"] for r in rows} == {"A", "Dnot", "pruned_8"}
    assert {r["baseline"] for r in rows} == {"teacher"}
    tasks = {r["task"] for r in rows}
    assert {"compfair_rtp", "compfair_tox4k", "compfair_stereoset_intrasentence", "compfair_winobias_type1_dev",
            "compfair_demo_perplexity"} <= tasks
    tox = next(r for r in rows if r["model"] == "A" and r["task"] == "compfair_rtp" and r["metric"] == "toxic_score")
    summary = {row["model"]: row for row in _rows(runs / "report" / "summary.csv")}
    assert float(tox["value"]) == pytest.approx(float(summary["A"]["compfair_rtp/toxic_score"]))
    assert float(tox["baseline_value"]) == pytest.approx(float(summary["teacher"]["compfair_rtp/toxic_score"]))
    assert tox["documents"] == "6"
    for r in rows:
        assert 0 < float(r["p_value"]) <= 1 and float(r["p_adjusted"]) >= float(r["p_value"]) - 1e-12
        assert math.isfinite(float(r["diff"]))
    # p_adjusted is Benjamini-Hochberg over every comparison of the report, computed here by scipy
    expected = stats.false_discovery_control([float(r["p_value"]) for r in rows], method="bh")
    assert [float(r["p_adjusted"]) for r in rows] == pytest.approx(list(expected), rel=1e-9)
    assert [r["significant"] for r in rows] == [str(bool(p < 0.05)) for p in expected]


@pytest.mark.slow
def test_a_second_run_skips_everything_already_done(demo):
    runs, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (runs / "eval").rglob("results_*.json")}
    result = _study(runs, "--stages", "teacher,prompts,distill,prune,evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    # The teacher, the prompts, three trained models and four evaluations.
    assert result.stderr.count("complete; skipped") == 1 + 1 + 3 + len(DEMO_MODELS)
    assert {p: p.stat().st_mtime_ns for p in (runs / "eval").rglob("results_*.json")} == before


def _args(*argv):
    return study.parse_args(["reproduce", *argv])


def test_reproduce_plan_covers_the_papers_models_with_existing_configs():
    plan = study.reproduce_plan(_args("--runs", "somewhere", "--tccc-train", "train.csv",
                                      "--accelerate-config", "trainer_configs/accelerate/single_gpu.yaml"))
    names = [m.name for m in plan.models]
    assert names[:2] == ["gpt2", "distilgpt2"]
    assert set(study.STUDENTS) <= set(names) and {f"wikitext_{n}" for n in study.PRUNE_SUBSETS} <= set(names)
    assert {"DialoGPT-small", "DialoGPT-medium", "DialoGPT-large", "blenderbot-400M-distill", "blenderbot-3B"} <= \
        set(names)
    by_name = {m.name: m for m in plan.models}
    assert by_name["blenderbot-400M-distill"].backend == "seq2seq"
    assert by_name["blenderbot-400M-distill"].compare_with == "blenderbot-3B"
    # BlenderBot's 128 positions must hold a prompt and its 20 generated tokens.
    assert all(by_name[name].model_args == "max_length=108" for name in ("blenderbot-400M-distill", "blenderbot-3B"))
    for model in plan.models:
        if model.build is not None:
            config = Path(REPO / model.build.argv[0])
            assert config.is_file(), config
            assert model.build.command()[:4] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    assert [step.argv[0] for step in plan.prompt_steps] == ["rtp", "tccc"]
    assert {b.label for b in plan.eval_batches} == {"toxicity", "bias", "perplexity"}


def test_bad_study_input_gives_one_line_errors(tmp_path):
    with pytest.raises(SystemExit) as err:
        study.main(["demo", "--runs", str(tmp_path), "--models", "A,Z9"])
    assert "unknown model(s) Z9" in str(err.value)
    with pytest.raises(SystemExit) as err:
        study.main(["reproduce", "--runs", str(tmp_path), "--stages", "prompts"])
    assert "TCCC" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as err:
        study.main(["reproduce", "--runs", str(tmp_path), "--stages", "report"])
    assert "no evaluated model" in str(err.value)
    with pytest.raises(SystemExit):
        study.parse_args(["demo", "--stages", "distill,polish"])


def test_a_thread_count_below_one_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as err:
        study.parse_args(["demo", "--threads", "0"])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.endswith("error: --threads 0: give at least 1 CPU thread")


def test_the_in_process_demo_indexes_lm_evals_builtin_tasks_once(tmp_path, monkeypatch):
    """The cached index equals lm-eval's own, and the include path is still read afresh on every call."""
    from lm_eval.tasks import TaskManager, _index

    monkeypatch.setattr(_index.TaskIndex, "build", _index.TaskIndex.__dict__["build"])  # restored afterwards
    ours = tmp_path / "tasks"
    shutil.copytree(REPO / "lm_eval_tasks", ours)
    plain = TaskManager(include_path=str(ours))
    study._index_builtin_lm_eval_tasks_once()
    first = TaskManager(include_path=str(ours))
    (ours / "bias" / "compfair_extra.yaml").write_text((ours / "bias" / "winobias_type1_dev.yaml").read_text().replace(
        "task: compfair_winobias_type1_dev", "task: compfair_extra"))
    second = TaskManager(include_path=str(ours))
    assert first.all_tasks == plain.all_tasks and len(plain.all_tasks) > 1000
    assert {k: v.yaml_path for k, v in first._index.items()} == {k: v.yaml_path for k, v in plain._index.items()}
    assert set(second.all_tasks) - set(first.all_tasks) == {"compfair_extra"}


def test_an_in_process_call_naming_only_our_tasks_does_not_index_lm_evals_builtin_tasks(tmp_path, monkeypatch):
    """The demo's lm-eval calls name only our tasks and task files, so the built-in folder is not indexed for
    them (7 s a call); a call naming a built-in task (wikitext) gets the full index."""
    from lm_eval.tasks import TaskManager, _index

    monkeypatch.setattr(_index.TaskIndex, "build", _index.TaskIndex.__dict__["build"])  # restored afterwards
    builtin, roots = Path(_index.__file__).resolve().parent, []
    plain_build = _index.TaskIndex.build
    monkeypatch.setattr(_index.TaskIndex, "build", staticmethod(
        lambda paths, **kw: roots.extend(Path(p).resolve() for p in paths) or plain_build(paths, **kw)))
    study._index_builtin_lm_eval_tasks_once()
    ours = str(REPO / "lm_eval_tasks")
    seen = {}

    def fake_cli():  # what lm-eval's CLI does first: a TaskManager over the built-ins and the include path
        seen[tuple(sys.argv[sys.argv.index("--tasks") + 1].split(","))] = set(TaskManager(include_path=ours).all_tasks)

    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", fake_cli)
    demo_tasks = ["compfair_bias", "compfair_crows_pairs", str(tmp_path / "compfair_demo_perplexity.yaml")]
    for tasks in (demo_tasks, ["compfair_bias", "wikitext"]):
        roots.clear()
        assert study._call_in_process(study.Step("lm_eval", ["--include_path", ours, "--tasks", ",".join(tasks)])) == 0
        assert (builtin in roots) == ("wikitext" in tasks), (tasks, roots)
    assert "compfair_bias" in seen[tuple(demo_tasks)] and "wikitext" not in seen[tuple(demo_tasks)]
    assert "wikitext" in seen[("compfair_bias", "wikitext")]
    assert study._builtin_tasks_wanted == [True]  # restored for the next caller


def test_the_in_process_demo_collects_lm_evals_environment_record_once(monkeypatch):
    """Each results file still gets lm-eval's environment record, equal to what lm-eval collects itself, but
    it is collected once per process, not once per model."""
    from lm_eval import evaluator
    from lm_eval.loggers import utils as lm_eval_logging

    monkeypatch.setattr(evaluator, "add_env_info", lm_eval_logging.add_env_info)  # restored afterwards
    own = {}
    lm_eval_logging.add_env_info(own)
    calls = []
    monkeypatch.setattr(evaluator, "add_env_info",
                        lambda storage: calls.append(1) or lm_eval_logging.add_env_info(storage))
    study._collect_lm_eval_environment_once()
    first, second = {"results": 1}, {"results": 2}
    evaluator.add_env_info(first)
    evaluator.add_env_info(second)
    assert len(calls) == 1
    recorded = [{k: v for k, v in storage.items() if k != "results"} for storage in (first, second)]
    assert recorded == [own, own]
    assert (first["results"], second["results"]) == (1, 2) and "pretty_env_info" in own
