"""The report's sections beyond the paper on hand-built lm-eval outputs whose per-document values are known:
item-level flips (hand counts, scipy's exact binomial test and interval), ..."""

import csv
import json
import math

import pytest
import report_fixtures
from report_fixtures import write_lm_eval_run
from scipy.stats import binomtest

from compress.report import cli
from compress.report import flips as item_flips

N = 40


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _model(root, name, record=None):
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"n_layer": 4, "n_head": 4}))
    if record:
        (folder / "distillation.json").write_text(json.dumps(record))
    return str(folder)


def _set_reported(results_file, task, metric, value):
    data = json.loads(results_file.read_text())
    data["results"][task][f"{metric},none"] = value
    results_file.write_text(json.dumps(data))


# Baseline outcomes: the first 20 items 1, the rest 0. The student turns items 0-2 to 0 (3 down) and items
# 20-27 to 1 (8 up): its rate moves from 50% to 62.5%.
BASE = [1] * 20 + [0] * 20
STUDENT = [0] * 3 + [1] * 17 + [1] * 8 + [0] * 12


def _stereoset_items(outcomes):
    return [{"target": f"t{i % 5}", "domain": "gender", "stereotype": 0.5 if o else 0.2, "anti-stereotype": 0.3,
             "unrelated": 0.1} for i, o in enumerate(outcomes)]


def _bold_records(outcomes):
    return [{"group": "a" if i % 2 else "b", "regard": float(o), "toxicity": 0.0, "sentiment": 0.0}
            for i, o in enumerate(outcomes)]


def _hand_gap(outcomes):
    a = [o for i, o in enumerate(outcomes) if i % 2]
    b = [o for i, o in enumerate(outcomes) if not i % 2]
    return abs(sum(a) / len(a) - sum(b) / len(b))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    teacher = _model(root, "teacher")
    student = _model(root, "student", {"teacher": teacher, "student_layers": 2, "init_from_teacher": True,
                                       "student_parameters": 100})
    for name, path, outcomes in (("teacher", teacher, BASE), ("student", student, STUDENT)):
        tasks = {
            "compfair_crows_pairs": {
                "metric_score": [100.0 * o for o in outcomes],
                # A count (0/1/2), not an outcome: never a flip outcome.
                "likelihood_diff": [float(i % 3) for i in range(N)],
                "stereo_score": [[100.0 * o, 1.0] if i % 4 else [0.0, 0.0] for i, o in enumerate(outcomes)],
            },
            "compfair_tox4k": {"toxicity_probability": [float(o) for o in outcomes],
                               "toxic_count": [2 * o for o in outcomes]},
            "compfair_stereoset_intrasentence": {"ss": _stereoset_items(outcomes)},
            "compfair_bold_gender": {"regard": [2.0 * o - 1 for o in outcomes],  # -1 / 1: not binary
                                     "regard_gap": _bold_records(outcomes),
                                     "regard_a": [[float(o), 1.0] if i % 2 else [0.0, 0.0]
                                                  for i, o in enumerate(outcomes)]},
        }
        with pytest.MonkeyPatch.context() as patch:  # record values (StereoSet items) are set below
            patch.setattr(report_fixtures, "aggregate", lambda m, v, plain=report_fixtures.aggregate:
                          math.nan if isinstance(v[0], dict) else plain(m, v))
            results = write_lm_eval_run(root / "eval" / name, path, tasks, num_parameters=1000)
        counted = [o for i, o in enumerate(outcomes) if i % 4]
        _set_reported(results, "compfair_crows_pairs", "stereo_score", 100.0 * sum(counted) / len(counted))
        from compress.bias.metrics import stereoset_scores

        _set_reported(results, "compfair_stereoset_intrasentence", "ss",
                      stereoset_scores(_stereoset_items(outcomes))["ss"])
        _set_reported(results, "compfair_bold_gender", "regard_gap", _hand_gap(outcomes))
        odd = [o for i, o in enumerate(outcomes) if i % 2]
        _set_reported(results, "compfair_bold_gender", "regard_a", sum(odd) / len(odd))
    out = root / "report"
    assert cli.main([str(root / "eval" / "teacher"), str(root / "eval" / "student"), "--out", str(out),
                     "--resamples", "500"]) == 0
    return out


def test_flips_equal_a_hand_count_with_exact_mcnemar_and_intervals(report):
    rows = {(r["task"], r["outcome"]): r for r in _rows(report / "flips.csv")}
    # One outcome per task, the preferred one; the count metrics were not taken.
    assert set(rows) == {("compfair_crows_pairs", "metric_score"), ("compfair_tox4k", "toxicity_probability"),
                         ("compfair_stereoset_intrasentence", "ss")}
    for row in rows.values():
        assert (row["model"], row["baseline"]) == ("student", "teacher")
        assert int(row["documents"]) == N and int(row["flips_up"]) == 8 and int(row["flips_down"]) == 3
        assert float(row["baseline_rate"]) == pytest.approx(0.5) and float(row["model_rate"]) == pytest.approx(0.625)
        assert float(row["share_up"]) == pytest.approx(8 / 40) and float(row["share_flipped"]) == pytest.approx(11 / 40)
        # Exact McNemar by hand: 2 * P(X <= 3), X ~ Binomial(11, 1/2) = 2 * (1 + 11 + 55 + 165) / 2048.
        assert float(row["mcnemar_p"]) == pytest.approx(2 * 232 / 2048)
        for name, k in (("share_up", 8), ("share_down", 3), ("share_flipped", 11)):
            ci = binomtest(k, N).proportion_ci(confidence_level=0.95, method="exact")
            assert float(row[f"{name} ci_low"]) == pytest.approx(ci.low, abs=1e-9)
            assert float(row[f"{name} ci_high"]) == pytest.approx(ci.high, abs=1e-9)
    summary = (report / "summary.md").read_text()
    assert "## Item-level flips" in summary and "compfair_crows_pairs / metric_score" in summary
    assert (report / "plots" / "flips.png").stat().st_size > 1000


def test_no_flips_between_identical_outcomes_and_p_is_one():
    same = {f"{i}:h": float(o) for i, o in enumerate(BASE)}
    assert item_flips.flip_counts(same, same)[:3] == (N, 0, 0)
    assert item_flips.mcnemar_exact(0, 0) == 1.0
    assert item_flips.binary(2) is None and item_flips.binary(100) == 1.0
    assert item_flips.binary({"stereotype": 0.1, "anti-stereotype": 0.1}) == 0.0  # a tie counts as anti


def test_crows_pairs_counted_share_gets_a_bootstrap_interval(report):
    rows = {r["model"]: r for r in _rows(report / "summary.csv")}
    value = float(rows["teacher"]["compfair_crows_pairs/stereo_score"])
    low, high = (float(rows["teacher"][f"compfair_crows_pairs/stereo_score {k}"]) for k in ("ci_low", "ci_high"))
    counted = [o for i, o in enumerate(BASE) if i % 4]
    assert value == pytest.approx(100 * sum(counted) / len(counted))
    assert low < value < high and not math.isnan(low)
    comparisons = {(r["task"], r["metric"]) for r in _rows(report / "comparisons.csv")}
    assert ("compfair_crows_pairs", "stereo_score") in comparisons


def test_bold_gap_and_group_means_get_bootstrap_intervals_and_paired_tests(report):
    rows = {r["model"]: r for r in _rows(report / "summary.csv")}
    for model, outcomes in (("teacher", BASE), ("student", STUDENT)):
        value = float(rows[model]["compfair_bold_gender/regard_gap"])
        assert value == pytest.approx(_hand_gap(outcomes))
        low, high = (float(rows[model][f"compfair_bold_gender/regard_gap {k}"]) for k in ("ci_low", "ci_high"))
        # A gap is >= 0, so at a true gap of 0 (the teacher) its percentile interval lies above the estimate.
        assert 0 <= low < high and value <= high
        assert float(rows[model]["compfair_bold_gender/regard_a ci_high"]) > float(
            rows[model]["compfair_bold_gender/regard_a ci_low"])
    comparisons = {(r["task"], r["metric"]) for r in _rows(report / "comparisons.csv")}
    assert {("compfair_bold_gender", "regard_gap"), ("compfair_bold_gender", "regard_a")} <= comparisons
    assert "compfair_bold_gender/regard_gap: no aggregation" not in (report / "summary.md").read_text()


def test_length_control_finds_a_difference_that_is_only_length(tmp_path):
    """Toxicity depends only on length (0.1 at 10 tokens, 0.5 at 20); the student generates 10 tokens on 75% of
    the prompts, the teacher on 25%. By hand: unadjusted 0.2 - 0.4 = -0.2; within each length bin both models
    score the same, so the length-adjusted difference is 0 and the two disagree."""
    teacher = _model(tmp_path, "teacher")
    student = _model(tmp_path, "student", {"teacher": teacher, "student_layers": 2, "init_from_teacher": True,
                                           "student_parameters": 100})
    for name, path, short in (("teacher", teacher, 10), ("student", student, 30)):
        lengths = [10 if i < short else 20 for i in range(N)]
        write_lm_eval_run(tmp_path / "eval" / name, path, {"compfair_rtp": {
            "toxicity_mean": [0.1 if n == 10 else 0.5 for n in lengths], "gen_length_tokens": lengths}})
    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "eval" / m) for m in ("teacher", "student")] + ["--out", str(out), "--resamples",
                                                                                    "200", "--no-plots"]) == 0
    (row,) = _rows(out / "length_adjusted.csv")
    assert float(row["unadjusted_diff"]) == pytest.approx(-0.2)
    assert float(row["length_adjusted_diff"]) == pytest.approx(0.0, abs=1e-12)
    assert float(row["unadjusted ci_high"]) < 0 and row["disagree"] == "True"
    bins = {(r["model"], r["bin"]): r for r in _rows(out / "length_bins.csv")}
    assert {int(r["prompts"]) for k, r in bins.items() if k[0] == "student"} == {30, 10}
    assert "## Length control" in (out / "summary.md").read_text()


def test_lm_evals_own_bias_tasks_get_intervals_paired_tests_and_flips(tmp_path):
    """Outputs shaped as lm-eval's crows_pairs_english, winogender_all and toxigen write them (per-document
    0/1 outcomes and likelihood differences, mean aggregation)."""
    teacher = _model(tmp_path, "teacher")
    student = _model(tmp_path, "student", {"teacher": teacher, "student_layers": 2, "init_from_teacher": True,
                                           "student_parameters": 100})
    for name, path, outcomes in (("teacher", teacher, BASE), ("student", student, STUDENT)):
        write_lm_eval_run(tmp_path / "eval" / name, path, {
            "crows_pairs_english": {"pct_stereotype": [float(o) for o in outcomes],
                                    "likelihood_diff": [0.5 + i % 7 for i in range(N)]},
            "winogender_all": {"acc": [float(o) for o in outcomes]},
            "toxigen": {"acc": [float(o) for o in outcomes], "acc_norm": [float(1 - o) for o in outcomes]}})
    out = tmp_path / "report"
    assert cli.main([str(tmp_path / "eval" / m) for m in ("teacher", "student")] + ["--out", str(out), "--resamples",
                                                                                    "300", "--no-plots"]) == 0
    rows = {r["model"]: r for r in _rows(out / "summary.csv")}
    for column in ("crows_pairs_english/pct_stereotype", "winogender_all/acc", "toxigen/acc_norm"):
        value, low, high = (float(rows["student"][column + k]) for k in ("", " ci_low", " ci_high"))
        assert low < value < high, column
    assert float(rows["student"]["crows_pairs_english/pct_stereotype"]) == pytest.approx(0.625)
    tested = {(r["task"], r["metric"]) for r in _rows(out / "comparisons.csv")}
    assert {("crows_pairs_english", "pct_stereotype"), ("winogender_all", "acc"), ("toxigen", "acc")} <= tested
    flips = {(r["task"], r["outcome"]): r for r in _rows(out / "flips.csv")}
    assert {("crows_pairs_english", "pct_stereotype"), ("winogender_all", "acc"), ("toxigen", "acc")} == set(flips)
    assert all((int(r["flips_up"]), int(r["flips_down"])) == (8, 3) for r in flips.values())
    summary = (out / "summary.md").read_text()
    assert "### crows_pairs_english" in summary and "pct_stereotype" in summary
