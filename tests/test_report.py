"""The report on hand-built lm-eval output directories whose per-document values are known."""

import csv
import json
import math
import random

import numpy as np
import pytest
from report_fixtures import write_lm_eval_run
from scipy import stats

from compress.report import aggregations, cli
from compress.report import build as rep
from compress.report.results import find_model_runs

N_DOCS = 40
RESAMPLES = ["--resamples", "1000"]


def _toxicity_tasks(scores, lengths):
    return {"compfair_tox4k": {
        "toxic_score": [3 * s for s in scores],
        "toxic_count": [3 * int(s > 0.5) for s in scores],
        "toxicity_mean": list(scores),
        "gen_length_tokens": list(lengths),
    }}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A teacher, an identical copy, a student that is more toxic on every prompt, and a pruned model."""
    root = tmp_path_factory.mktemp("study")
    rng = random.Random(0)
    scores = [rng.uniform(0.05, 0.6) for _ in range(N_DOCS)]
    lengths = [rng.randint(5, 20) for _ in range(N_DOCS)]
    perplexity = [[-rng.uniform(10, 60), rng.randint(5, 15)] for _ in range(N_DOCS)]
    models = root / "models"

    def model_dir(name, config, record=None):
        folder = models / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        if record:
            (folder / record[0]).write_text(json.dumps(record[1]))
        return str(folder)

    teacher = model_dir("teacher", {"n_layer": 12, "n_head": 12})

    def tasks(shift=0.0, ppl_scale=1.0):
        out = _toxicity_tasks([min(1.0, s + shift) for s in scores], lengths)
        out["demo_perplexity"] = {"word_perplexity": [[ll * ppl_scale, n] for ll, n in perplexity]}
        return out

    write_lm_eval_run(root / "eval" / "teacher", teacher, tasks(), num_parameters=5000)
    copy = model_dir("copy", {"n_layer": 6, "n_head": 12},
                     ("distillation.json", {"teacher": teacher, "student_layers": 6, "init_from_teacher": True,
                                            "student_parameters": 3000, "perplexity": 21.0}))
    write_lm_eval_run(root / "eval" / "copy", copy, tasks(), num_parameters=3001)
    toxic = model_dir("toxic", {"n_layer": 4, "n_head": 12},
                      ("distillation.json", {"teacher": teacher, "student_layers": 4, "init_from_teacher": False,
                                             "student_parameters": 2000, "perplexity": 30.0}))
    write_lm_eval_run(root / "eval" / "toxic", toxic, tasks(shift=0.15, ppl_scale=1.4), num_parameters=2001)
    pruned = model_dir("pruned", {"n_layer": 12, "n_head": 12},
                       ("pruning.json", {"model_name_or_path": teacher, "num_samples": 256,
                                         "heads_per_iteration": [144, 136, 129, 122],
                                         "perplexity_per_iteration": [20.0, 20.5, 21.0, 22.0],
                                         "parameter_count": {"unpruned": 5000, "pruned": 4500}}))
    write_lm_eval_run(root / "eval" / "pruned", pruned, tasks(shift=-0.02, ppl_scale=1.1), num_parameters=5000)
    out = root / "report"
    assert cli.main([str(p) for p in sorted((root / "eval").iterdir())] + ["--out", str(out)] + RESAMPLES) == 0
    return {"root": root, "out": out, "scores": scores, "perplexity": perplexity}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def benjamini_hochberg_by_scipy(p_values):
    return [float(p) for p in stats.false_discovery_control(p_values, method="bh")]


def holm_by_definition(p_values):
    """Holm's step-down: the i-th smallest p times (m - i + 1), made monotone by a running maximum."""
    m = len(p_values)
    ranked = sorted(range(m), key=lambda i: p_values[i])
    steps = [min(1.0, (m - rank) * p_values[i]) for rank, i in enumerate(ranked)]
    adjusted = [0.0] * m
    for rank, i in enumerate(ranked):
        adjusted[i] = max(steps[:rank + 1])
    return adjusted


def check_correction(path, correction="bh", alpha=0.05):
    """p_adjusted in a comparisons.csv or correlations.csv is the correction, computed here, of its p_value column."""
    rows = [r for r in _rows(path) if not math.isnan(float(r["p_value"]))]
    raw = [float(r["p_value"]) for r in rows]
    expected = benjamini_hochberg_by_scipy(raw) if correction == "bh" else holm_by_definition(raw)
    for row, p in zip(rows, expected, strict=True):
        assert float(row["p_adjusted"]) == pytest.approx(p, rel=1e-9, abs=1e-15), (row["model"] if "model" in row
                                                                                  else row["family"], row["metric"])
        assert row["significant"] == str(p < alpha)
    return rows


def test_summary_has_one_row_per_model_with_values_copied_from_results(study):
    rows = {row["model"]: row for row in _rows(study["out"] / "summary.csv")}
    assert set(rows) == {"teacher", "copy", "toxic", "pruned"}
    for name, row in rows.items():
        results_file = next((study["root"] / "eval" / name).rglob("results_*.json"))
        results = json.loads(results_file.read_text())["results"]
        assert str(results_file) in row["results_files"]
        for task, entry in results.items():
            for key, value in entry.items():
                if key.endswith(",none") and "_stderr" not in key:
                    column = f"{task}/{key.split(',')[0]}"
                    assert float(row[column]) == value
                    assert float(row[f"{column} ci_low"]) <= value <= float(row[f"{column} ci_high"])


def test_model_descriptions_come_from_configs_and_trainer_records(study):
    rows = {row["model"]: row for row in _rows(study["out"] / "summary.csv")}
    assert rows["teacher"]["method"] == "original" and rows["teacher"]["heads"] == "144"
    assert rows["teacher"]["parameters"] == "5000"
    assert rows["toxic"]["method"] == "distillation" and rows["toxic"]["init"] == "random"
    assert rows["toxic"]["blocks"] == "4" and rows["toxic"]["parameters"] == "2000"
    assert rows["toxic"]["baseline"] == "teacher"
    assert rows["pruned"]["method"] == "head pruning" and rows["pruned"]["heads"] == "122"
    assert rows["pruned"]["parameters"] == "4500" and rows["pruned"]["prune_subset"] == "256"
    # Every model has lm-eval's word perplexity, so that is the one used for all of them.
    assert {row["perplexity_source"] for row in rows.values()} == {"lm-eval demo_perplexity word_perplexity"}
    ll = sum(p[0] for p in study["perplexity"])
    words = sum(p[1] for p in study["perplexity"])
    assert float(rows["teacher"]["perplexity"]) == pytest.approx(math.exp(-ll / words))


def test_identical_model_not_significant_and_uniformly_higher_model_significant(study):
    rows = _rows(study["out"] / "comparisons.csv")
    copy = [r for r in rows if r["model"] == "copy" and r["task"] == "compfair_tox4k"]
    toxic = {r["metric"]: r for r in rows if r["model"] == "toxic" and r["task"] == "compfair_tox4k"}
    assert copy and all(r["significant"] == "False" and float(r["p_value"]) == 1.0 for r in copy)
    assert all(r["baseline"] == "teacher" and r["documents"] == str(N_DOCS) for r in copy)
    for metric in ("toxic_score", "toxicity_mean"):
        assert toxic[metric]["significant"] == "True"
        assert float(toxic[metric]["diff"]) > 0 and float(toxic[metric]["ci_low"]) > 0
    # corrected over every comparison in the report (Benjamini-Hochberg by default), so the adjusted p moves
    assert len(check_correction(study["out"] / "comparisons.csv")) == len(rows)
    assert any(float(r["p_adjusted"]) > float(r["p_value"]) for r in rows)
    check_correction(study["out"] / "correlations.csv")
    summary = (study["out"] / "summary.md").read_text()
    assert "**copy** vs **teacher**: no significant difference" in summary
    assert "compfair_tox4k/toxicity_mean: higher" in summary


def test_models_are_paired_on_the_same_documents_not_the_same_lines(tmp_path):
    """The baseline's samples file is shuffled and lacks one document: each pair must still be one document."""
    rng = random.Random(5)
    n = 30
    base = [rng.uniform(0.1, 0.6) for _ in range(n)]
    gaps = [rng.uniform(-0.1, 0.3) for _ in range(n)]
    teacher, student = tmp_path / "models" / "teacher", tmp_path / "models" / "student"
    for folder in (teacher, student):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"n_layer": 4, "n_head": 4}))
    (student / "distillation.json").write_text(json.dumps({"teacher": str(teacher), "student_layers": 2,
                                                           "init_from_teacher": True, "student_parameters": 50}))
    # toxicity_mean: the student is the teacher + 0.1 on every document; toxic_score: + a gap of its own
    write_lm_eval_run(tmp_path / "eval" / "student", str(student), {"t": {
        "toxicity_mean": [v + 0.1 for v in base], "toxic_score": [v + g for v, g in zip(base, gaps)]}})
    results = write_lm_eval_run(tmp_path / "eval" / "teacher", str(teacher), {"t": {
        "toxicity_mean": base, "toxic_score": base}})
    samples_file = next(results.parent.glob("samples_t_*.jsonl"))
    missing = 11
    lines = [line for line in samples_file.read_text().splitlines() if json.loads(line)["doc_id"] != missing]
    rng.shuffle(lines)
    samples_file.write_text("\n".join(lines) + "\n")
    kept = [i for i in range(n) if i != missing]
    data = json.loads(results.read_text())  # the teacher's reported values are those of its 29 documents
    data["results"]["t"]["toxicity_mean,none"] = sum(base[i] for i in kept) / len(kept)
    data["results"]["t"]["toxic_score,none"] = sum(base[i] for i in kept)
    results.write_text(json.dumps(data))
    assert [json.loads(line)["doc_id"] for line in lines] != sorted(kept)  # really out of order

    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "eval" / "teacher"), str(tmp_path / "eval" / "student"), "--out", str(out),
                     "--resamples", "2000"]) == 0
    rows = {r["metric"]: r for r in _rows(out / "comparisons.csv")}
    assert set(rows) == {"toxicity_mean", "toxic_score"}
    assert all(r["documents"] == str(len(kept)) for r in rows.values())
    shift = rows["toxicity_mean"]
    assert float(shift["diff"]) == pytest.approx(0.1)
    # every paired difference is 0.1, so every resample's mean is too and no swap reaches it
    assert (float(shift["ci_low"]), float(shift["ci_high"])) == pytest.approx((0.1, 0.1), abs=1e-9)
    assert float(shift["p_value"]) == pytest.approx(1 / 2001)
    summed = rows["toxic_score"]
    assert float(summed["diff"]) == pytest.approx(sum(gaps[i] for i in kept))
    assert float(summed["value"]) == pytest.approx(sum(base[i] + gaps[i] for i in kept))
    assert float(summed["baseline_value"]) == pytest.approx(sum(base[i] for i in kept))
    assert f"student vs teacher on t: {len(kept)} shared documents of {n} and {len(kept)}" in \
        (out / "summary.md").read_text()


def _borderline_study(root):
    """A student against its teacher on 20 prompts: toxic_score higher on every prompt (p about 1e-4),
    toxicity_mean higher on 15 and lower on 5 (exact two-sided p = 0.0414), gen_length_tokens identical (p = 1)."""
    rng = random.Random(3)
    base = [rng.uniform(0.2, 0.6) for _ in range(20)]
    signs = [1] * 15 + [-1] * 5
    rng.shuffle(signs)
    lengths = [rng.randint(5, 20) for _ in range(20)]
    teacher, student = root / "models" / "teacher", root / "models" / "student"
    for folder in (teacher, student):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"n_layer": 4, "n_head": 4}))
    (student / "distillation.json").write_text(json.dumps({"teacher": str(teacher), "student_layers": 2,
                                                           "init_from_teacher": True, "student_parameters": 50}))
    write_lm_eval_run(root / "eval" / "teacher", str(teacher), {"t": {
        "toxic_score": base, "toxicity_mean": base, "gen_length_tokens": lengths}}, num_parameters=100)
    write_lm_eval_run(root / "eval" / "student", str(student), {"t": {
        "toxic_score": [v + 0.05 for v in base], "toxicity_mean": [v + 0.1 * s for v, s in zip(base, signs)],
        "gen_length_tokens": lengths}}, num_parameters=50)
    return [root / "eval" / "teacher", root / "eval" / "student"]


@pytest.mark.parametrize("correction", ["bh", "holm"])
def test_a_raw_p_below_alpha_is_not_significant_once_corrected(tmp_path, correction):
    dirs = _borderline_study(tmp_path)
    out = tmp_path / "report"
    args = [str(d) for d in dirs] + ["--out", str(out), "--correction", correction, "--resamples", "10000"]
    assert cli.main(args) == 0
    rows = {r["metric"]: r for r in check_correction(out / "comparisons.csv", correction)}
    assert set(rows) == {"toxic_score", "toxicity_mean", "gen_length_tokens"}
    exact = 2 * sum(math.comb(20, k) for k in range(15, 21)) / 2 ** 20  # 15 of 20 signs agree, two-sided
    borderline = rows["toxicity_mean"]
    assert float(borderline["p_value"]) == pytest.approx(exact, abs=0.008) and float(borderline["p_value"]) < 0.05
    # BH: 3 p / 2 (its rank is 2 of 3); Holm: 2 p (m - rank + 1 = 2). Either way above 0.05: not significant.
    factor = 1.5 if correction == "bh" else 2.0
    assert float(borderline["p_adjusted"]) == pytest.approx(factor * float(borderline["p_value"]), rel=1e-9)
    assert borderline["significant"] == "False"
    assert rows["toxic_score"]["significant"] == "True" and rows["gen_length_tokens"]["significant"] == "False"


def test_intervals_use_the_aggregation_that_reproduces_each_metric(study, tmp_path):
    report = rep.build_report(sorted((study["root"] / "eval").iterdir()), resamples=500)
    teacher_score = report.estimate("teacher", "compfair_tox4k", "toxic_score")
    assert teacher_score.interval == "bootstrap"
    # toxic_score is a sum over prompts: its interval is about N_DOCS times that of the per-prompt mean.
    mean_score = report.estimate("teacher", "compfair_tox4k", "toxicity_mean")
    assert (teacher_score.high - teacher_score.low) == pytest.approx(
        3 * N_DOCS * (mean_score.high - mean_score.low), rel=0.3)
    assert not [n for n in report.notes if "reproduces" in n]


def test_size_correlation_and_perplexity_matched_line(study):
    correlations = _rows(study["out"] / "correlations.csv")
    assert {r["family"] for r in correlations} == {"all"}
    # rho, n and the exact p (all 4! orderings, as the report does for n <= 8) recomputed by scipy from the
    # parameter counts and the values in summary.csv
    summary = {row["model"]: row for row in _rows(study["out"] / "summary.csv")}
    checked = 0
    for row in correlations:
        column = f"{row['task']}/{row['metric']}"
        present = [m for m in summary if summary[m]["parameters"] and summary[m].get(column) not in (None, "")]
        x = [float(summary[m]["parameters"]) for m in present]
        y = [float(summary[m][column]) for m in present]
        assert int(row["models"]) == len(present) == 4, column
        expected = stats.spearmanr(x, y)
        assert float(row["rho"]) == pytest.approx(expected.statistic, abs=1e-12), column
        exact = stats.permutation_test((x, y), lambda a, b: stats.spearmanr(a, b).statistic,
                                       permutation_type="pairings", n_resamples=math.inf)
        assert float(row["p_value"]) == pytest.approx(exact.pvalue, rel=1e-9), column
        checked += 1
    assert checked == len(correlations) >= 4
    assert any(abs(float(r["rho"])) > 0.5 for r in correlations)  # a sign flip would show
    matched = [r for r in _rows(study["out"] / "perplexity_matched.csv") if r["metric"] == "toxic_score"]
    assert {r["model"] for r in matched} == {"teacher", "copy", "toxic", "pruned"}
    # The reference line is fitted on the two non-distilled models only; recompute it independently.
    ref = {r["model"]: r for r in matched if r["model"] in ("teacher", "pruned")}
    x = [math.log(float(ref[m]["perplexity"])) for m in ("teacher", "pruned")]
    y = [float(ref[m]["value"]) for m in ("teacher", "pruned")]
    slope, intercept = np.polyfit(x, y, 1)
    toxic = next(r for r in matched if r["model"] == "toxic")
    predicted = intercept + slope * math.log(float(toxic["perplexity"]))
    assert float(toxic["predicted"]) == pytest.approx(predicted)
    assert float(toxic["residual"]) == pytest.approx(float(toxic["value"]) - predicted)
    assert "non-distilled" in toxic["reference"]
    # "toxic" has a higher perplexity than either reference: its prediction is an extrapolation, flagged as such.
    assert toxic["extrapolated"] == "True"
    assert next(r for r in matched if r["model"] == "teacher")["extrapolated"] == "False"
    assert "(extrapolated)" in (study["out"] / "summary.md").read_text()


def test_models_distilled_elsewhere_are_not_references(study):
    dirs = sorted((study["root"] / "eval").iterdir())
    report = rep.build_report(dirs, resamples=200, distilled=["teacher"])
    assert next(m for m in report.models if m.name == "teacher").method == "distillation"
    references = {r.reference for r in report.matched}
    assert references == {
        "all models of its lineage (fewer than two non-distilled perplexities): copy, pruned, teacher, toxic"}
    with pytest.raises(SystemExit, match="--distilled nobody"):
        rep.build_report(dirs, distilled=["nobody"])


def test_plots_are_written_and_not_empty(study):
    for name in ("toxicity.png", "perplexity.png", "perplexity_vs_metrics.png", "generation_length.png"):
        path = study["out"] / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000
    assert "![toxicity](plots/toxicity.png)" in (study["out"] / "summary.md").read_text()


def test_newest_results_per_task_win(tmp_path):
    old = {"compfair_tox4k": {"toxicity_mean": [0.1, 0.2]}, "other": {"toxicity_mean": [0.9, 0.9]}}
    write_lm_eval_run(tmp_path / "eval", "m", old, date="2024-01-01T00-00-00.0")
    write_lm_eval_run(tmp_path / "eval", "m", {"compfair_tox4k": {"toxicity_mean": [0.3, 0.5]}},
                      date="2024-02-01T00-00-00.0")
    (run,) = find_model_runs([tmp_path / "eval"])
    assert run.tasks["compfair_tox4k"].metrics[("toxicity_mean", "none")] == pytest.approx(0.4)
    assert run.tasks["other"].metrics[("toxicity_mean", "none")] == pytest.approx(0.9)
    assert run.tasks["compfair_tox4k"].samples_file.name == "samples_compfair_tox4k_2024-02-01T00-00-00.0.jsonl"


def test_without_samples_the_interval_is_lm_evals_stderr(tmp_path):
    path = write_lm_eval_run(tmp_path / "eval", "m", {"t": {"toxicity_mean": [0.1, 0.3]}}, with_samples=False)
    data = json.loads(path.read_text())
    data["results"]["t"]["toxicity_mean_stderr,none"] = 0.05
    path.write_text(json.dumps(data))
    report = rep.build_report([tmp_path / "eval"])
    estimate = report.estimate("eval", "t", "toxicity_mean")
    assert estimate.interval == "stderr"
    assert (estimate.low, estimate.high) == pytest.approx((0.2 - 1.96 * 0.05, 0.2 + 1.96 * 0.05), abs=1e-4)


@pytest.mark.parametrize("problem, message", [
    ("missing", "not found"),
    ("empty", "no results_"),
    ("malformed", "no 'results' mapping"),
    ("compare", "no model named 'nobody'"),
])
def test_bad_input_gives_one_line_errors(tmp_path, problem, message):
    write_lm_eval_run(tmp_path / "good", "m", {"t": {"toxicity_mean": [0.1, 0.3]}})
    target = tmp_path / "good"
    extra = []
    if problem == "missing":
        target = tmp_path / "absent"
    elif problem == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif problem == "malformed":
        (tmp_path / "good" / "m" / "results_2030-01-01T00-00-00.0.json").write_text("[1, 2]")
    else:
        extra = ["--compare", "nobody=good"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(target), "--out", str(tmp_path / "out")] + extra)
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_vectorised_bold_gap_equals_the_reference_function():
    """The report's vectorised BOLD gap gives exactly what compress.bias.bold.group_gap computes, on the data and on
    every resample (same resamples through both), groups missing from a resample included."""
    bold = pytest.importorskip("compress.bias.bold")
    from compress.report import significance

    rng = random.Random(2)
    groups = ["a", "b", "c", "rare"]
    records = [{"group": rng.choice(groups[:3]), "regard": rng.uniform(-1, 1), "toxicity": rng.random()}
               for _ in range(40)] + [{"group": "rare", "regard": 0.9, "toxicity": 0.8}]
    metrics = ["regard_gap", "toxicity_gap"]
    fast, reference = aggregations.group_gap_aggregation(metrics), aggregations.group_gap_statistic(metrics)
    assert fast.outputs == reference.outputs == tuple(metrics)
    prepared = significance.prepare_values(fast, records)
    assert significance.evaluate_all(fast, prepared) == pytest.approx(
        [bold.group_gap(records, "regard"), bold.group_gap(records, "toxicity")], rel=1e-12)
    fast_draws = significance._bootstrap_draws(fast, [prepared], np.random.default_rng(5), 300)[0]
    slow_draws = significance._bootstrap_draws(reference, [records], np.random.default_rng(5), 300)[0]
    assert fast_draws == pytest.approx(slow_draws, rel=1e-12)
    other = list(reversed(records))
    for a, b in zip(significance.paired_comparisons(records, other, fast, resamples=200),
                    significance.paired_comparisons(records, other, reference, resamples=200)):
        assert (a.diff, a.low, a.high, a.p_value) == pytest.approx((b.diff, b.low, b.high, b.p_value), nan_ok=True)


def test_vectorised_stereoset_aggregation_equals_the_reference_function():
    """The report's vectorised StereoSet statistic gives exactly what compress.bias.metrics computes, on the
    data and on every resample (same resamples through both)."""
    bias_metrics = pytest.importorskip("compress.bias.metrics")
    from compress.report import significance

    rng = random.Random(1)
    items = [bias_metrics.stereoset_item(f"target{rng.randint(0, 9)}", rng.choice(bias_metrics.DOMAINS),
                                         {label: rng.random() for label in bias_metrics.LABELS}) for _ in range(80)]
    metrics = ["ss", "lms", "icat", "ss_gender", "lms_race", "icat_religion", "ss_profession"]
    fast, reference = aggregations.stereoset_aggregation(metrics), aggregations.stereoset_statistic(metrics)
    assert fast.outputs == reference.outputs == tuple(metrics)
    prepared = significance.prepare_values(fast, items)
    assert significance.evaluate_all(fast, prepared) == pytest.approx(significance.evaluate_all(reference, items))
    overall = bias_metrics.stereoset_scores(items)
    assert significance.evaluate_all(fast, prepared)[:3] == pytest.approx([overall["ss"], overall["lms"],
                                                                           overall["icat"]])
    fast_intervals = significance.bootstrap_intervals(items, fast, resamples=300)
    reference_intervals = significance.bootstrap_intervals(items, reference, resamples=300)
    for a, b in zip(fast_intervals, reference_intervals):
        assert (a.value, a.low, a.high) == pytest.approx((b.value, b.low, b.high), nan_ok=True)
    other = list(reversed(items))
    for a, b in zip(significance.paired_comparisons(items, other, fast, resamples=200),
                    significance.paired_comparisons(items, other, reference, resamples=200)):
        assert (a.diff, a.low, a.high, a.p_value) == pytest.approx((b.diff, b.low, b.high, b.p_value), nan_ok=True)


def test_compact_pruned_form_is_described_by_its_runs_pruning_record(tmp_path):
    run_dir = tmp_path / "pruned"
    (run_dir / "compact").mkdir(parents=True)
    (run_dir / "pruning.json").write_text(json.dumps({
        "model_name_or_path": "gpt2", "heads_per_iteration": [8, 7],
        "saved_forms": {"portable": ".", "compact": "compact"}, "parameter_count": {"unpruned": 100, "pruned": 90}}))
    (run_dir / "compact" / "config.json").write_text(json.dumps({
        "model_type": "compact_gpt2", "n_layer": 2, "n_head": 4, "kept_heads": [[0, 1, 2, 3], [0, 2, 3]]}))
    write_lm_eval_run(tmp_path / "eval", str(run_dir / "compact"), {"t": {"toxicity_mean": [0.1, 0.3]}})
    (info,) = rep.build_report([tmp_path / "eval"], resamples=100).models
    assert info.method == "head pruning" and info.heads == 7 and info.parameters == 90 and info.blocks == 2


def test_a_dropped_model_is_described_by_its_layer_dropping_record(tmp_path):
    """A shortened model is compared with the model it was cut from, like a distilled student of the same depth."""
    teacher, dropped = tmp_path / "teacher", tmp_path / "dropped"
    teacher.mkdir()
    dropped.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12, "n_head": 12}))
    (dropped / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 6, "n_head": 12}))
    (dropped / "layer_dropping.json").write_text(json.dumps({
        "model_name_or_path": str(teacher), "method": "angular_distance", "num_blocks": {"before": 12, "after": 6},
        "blocks_removed": [5, 6, 7, 8, 9, 10], "perplexity_before": 30.0, "perplexity_after": 80.0,
        "parameter_count": {"before": 1000, "after": 600}, "healing": {"perplexity_after_healing": 40.0}}))
    write_lm_eval_run(tmp_path / "eval" / "teacher", str(teacher), {"t": {"toxicity_mean": [0.1, 0.3]}})
    write_lm_eval_run(tmp_path / "eval" / "dropped", str(dropped), {"t": {"toxicity_mean": [0.2, 0.3]}})
    models = {m.name: m for m in rep.build_report([tmp_path / "eval" / "teacher", tmp_path / "eval" / "dropped"],
                                                  resamples=100).models}
    info = models["dropped"]
    assert (info.method, info.blocks, info.parameters, info.baseline) == ("layer dropping", 6, 600, "teacher")
    assert info.baseline_source == "layer_dropping.json" and info.trainer_perplexity == 40.0
    assert info.label == "dropped (6 blocks, dropped)" and models["teacher"].method == "original"


def test_a_dropped_model_is_also_compared_with_the_student_of_its_depth(tmp_path):
    """Layer dropping is the control for distillation to the same depth: the report pairs a dropped model with
    each distilled student of the same teacher and block count (and with no other student)."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12, "n_head": 12}))
    folders = {"teacher": teacher}
    for name, blocks, record in (
            ("dropped", 6, ("layer_dropping.json", {"model_name_or_path": str(teacher), "method": "block_influence",
                                                    "num_blocks": {"before": 12, "after": 6}})),
            ("student6", 6, ("distillation.json", {"teacher": str(teacher), "student_layers": 6})),
            ("student4", 4, ("distillation.json", {"teacher": str(teacher), "student_layers": 4}))):
        folder = folders[name] = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": blocks, "n_head": 12}))
        (folder / record[0]).write_text(json.dumps(record[1]))
    rng = random.Random(0)
    scores = {name: [rng.uniform(0, 1) for _ in range(40)] for name in folders}
    scores["dropped"] = [s + 0.5 for s in scores["student6"]]  # every document higher than the student's
    dirs = []
    for name, folder in folders.items():
        write_lm_eval_run(tmp_path / "eval" / name, str(folder), {"t": {"toxicity_mean": scores[name]}})
        dirs.append(tmp_path / "eval" / name)
    report = rep.build_report(dirs, resamples=200)
    pairs = {(c.model, c.baseline) for c in report.comparisons}
    assert pairs == {("dropped", "teacher"), ("student6", "teacher"), ("student4", "teacher"),
                     ("dropped", "student6")}
    (control,) = [c for c in report.comparisons if (c.model, c.baseline) == ("dropped", "student6")]
    assert control.diff == pytest.approx(0.5) and control.value == pytest.approx(sum(scores["dropped"]) / 40)
    assert control.significant


def test_model_families_stay_apart_in_size_correlations_and_the_perplexity_line(study, tmp_path):
    """An unrelated original model (no record: made from nothing here) beside the teacher's lineage: by default
    neither the size correlations nor the perplexity-matched line mix it in; --mix-families and --reference do."""
    rng = random.Random(1)
    other = tmp_path / "models" / "other"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"n_layer": 24, "n_head": 16}))
    scores = [rng.uniform(0.05, 0.6) for _ in range(N_DOCS)]
    tasks = _toxicity_tasks(scores, [rng.randint(5, 20) for _ in range(N_DOCS)])
    log_likelihoods = [[-rng.uniform(10, 60), rng.randint(5, 15)] for _ in range(N_DOCS)]
    tasks["demo_perplexity"] = {"word_perplexity": log_likelihoods}
    write_lm_eval_run(tmp_path / "eval" / "other", str(other), tasks, num_parameters=90000)
    dirs = sorted((study["root"] / "eval").iterdir()) + [tmp_path / "eval" / "other"]

    report = rep.build_report(dirs, resamples=200)
    assert {m.name for m in report.models} == {"teacher", "copy", "toxic", "pruned", "other"}
    assert report.correlations and {c.family for c in report.correlations} <= {"teacher lineage", "teacher family"}
    assert all(c.n == 4 for c in report.correlations)  # the teacher's four, never the unrelated fifth
    assert report.matched and all("other" not in r.reference.split(": ")[1].split(", ") for r in report.matched)
    assert not [r for r in report.matched if r.model == "other"]  # alone in its lineage: no line to compare with

    mixed = rep.build_report(dirs, resamples=200, mix_families=True)
    assert {c.n for c in mixed.correlations if c.family == "all"} == {5}
    named = rep.build_report(dirs, resamples=200, references=["pruned", "other"])
    assert {r.reference for r in named.matched} == {"named reference models: pruned, other"}
    assert {r.model for r in named.matched} == {"teacher", "copy", "toxic", "pruned", "other"}
    with pytest.raises(SystemExit, match="--reference nobody"):
        rep.build_report(dirs, resamples=200, references=["nobody"])
