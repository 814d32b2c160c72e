"""Several toxicity scorers in one pass: each scorer's metrics through lm-eval, recomputed with each classifier
used directly; the report's rankings per scorer, Kendall's tau by hand count, and the TCCC flag."""

import csv
import json

import lm_eval
import numpy as np
import pytest
from report_fixtures import write_lm_eval_run
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.report import cli
from compress.toxicity import metrics as toxicity_metrics
from compress.toxicity.scorers import ScorerError, spec_slug, split_specs
from tests import test_toxicity_tasks
from tests.test_toxicity_tasks import task_manager

# The toxicity tests' fixtures: a data dir made with compfair-prompts, and the tiny Detoxify used directly.
data_dir = test_toxicity_tasks.data_dir
reference_scorer = test_toxicity_tasks.reference_scorer


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_scorers_in_one_pass_give_every_metric_per_scorer(tiny_gpt2, tiny_detoxify, tiny_regard, data_dir,
                                                              reference_scorer):
    second = f"hf:{tiny_regard}#negative"  # any classifier: the regard model's negative class as "toxic"
    spec = f"detoxify:{tiny_detoxify},{second}"
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_gpt2}", tasks=["compfair_tox4k"],
                                      task_manager=task_manager(data_dir=str(data_dir), scorer=spec),
                                      log_samples=True, batch_size=16, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(tiny_regard)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_regard).eval()
    negative = model.config.label2id["negative"]

    def second_scorer(text):
        import torch

        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0]
        return torch.softmax(logits, -1)[negative].item()

    slugs = [spec_slug(s) for s in split_specs(spec)]
    metrics = results["results"]["compfair_tox4k"]
    per_prompt = {slug: [] for slug in slugs}
    for sample in results["samples"]["compfair_tox4k"]:
        scored = json.loads(sample["filtered_resps"][0])
        assert list(scored["toxicity_by_scorer"]) == split_specs(spec)
        for slug, score in zip(slugs, (reference_scorer, second_scorer), strict=True):
            toxicity = [score(g) for g in sample["resps"][0]]
            values = toxicity_metrics.per_prompt(toxicity, [1] * 3, [1] * 3)
            for name in toxicity_metrics.SCORED:
                assert sample[f"{name}@{slug}"] == pytest.approx(values[name], abs=1e-5), (slug, name)
            per_prompt[slug].append(values)
        for name in toxicity_metrics.SCORED:  # the plain names are the first scorer's
            assert sample[name] == sample[f"{name}@{slugs[0]}"]
    for slug in slugs:
        for name in toxicity_metrics.SCORED:
            column = [row[name] for row in per_prompt[slug]]
            expected = sum(column) if name in toxicity_metrics.SUMMED else sum(column) / len(column)
            assert metrics[f"{name}@{slug},scored"] == pytest.approx(expected, abs=1e-5), (slug, name)


def test_scorer_lists_are_checked():
    assert split_specs("detoxify:original, detoxify:unbiased") == ["detoxify:original", "detoxify:unbiased"]
    with pytest.raises(ScorerError, match="twice"):
        split_specs("detoxify:original,detoxify:original")
    with pytest.raises(ScorerError, match="share the metric suffix"):
        split_specs("detoxify:/a/x.ckpt,detoxify:/b/a/x.ckpt")


# Per-prompt toxic_score of four models under two scorers; scorer b swaps the order of m2 and m3.
N = 30
LEVEL = {"m1": 0.1, "m2": 0.3, "m3": 0.35, "m4": 0.8}
SWAPPED = {"m1": 0.1, "m2": 0.4, "m3": 0.2, "m4": 0.9}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    for model in LEVEL:
        values_a = [LEVEL[model] + 0.01 * (i % 3) for i in range(N)]
        values_b = [SWAPPED[model] + 0.01 * (i % 5) for i in range(N)]
        write_lm_eval_run(root / model, model, {"compfair_tox4k": {
            "toxic_score": values_a, "toxic_score@a": values_a, "toxic_score@b": values_b}})
        samples = next((root / model).rglob("samples_compfair_tox4k_*.jsonl"))
        records = [json.loads(line) for line in samples.read_text().splitlines()]
        for record in records:
            record["doc"]["scorer"] = "detoxify:original,detoxify:unbiased"
        samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "report"
    assert cli.main([str(root / m) for m in LEVEL] + ["--out", str(out), "--resamples", "200", "--no-plots"]) == 0
    return out


def test_rankings_per_scorer_and_kendall_tau_by_hand(report):
    ranks = {(r["scorer"], r["model"]): int(r["rank"]) for r in _rows(report / "scorer_rankings.csv")}
    assert [ranks[("a", m)] for m in LEVEL] == [1, 2, 3, 4]
    assert [ranks[("b", m)] for m in LEVEL] == [1, 3, 2, 4]
    (row,) = _rows(report / "scorer_agreement.csv")
    # By hand: of the 6 model pairs, 5 are ordered alike and 1 (m2, m3) oppositely: tau = (5 - 1) / 6.
    assert float(row["kendall_tau"]) == pytest.approx(4 / 6)
    assert int(row["models"]) == 4 and int(row["documents"]) == N
    assert -1 <= float(row["ci_low"]) <= float(row["kendall_tau"]) <= float(row["ci_high"]) <= 1
    summary = (report / "summary.md").read_text()
    assert "## Toxicity scorer robustness" in summary and "compfair_tox4k / toxic_score" in summary


def test_tccc_scored_by_the_tccc_trained_detoxify_is_flagged(report):
    summary = (report / "summary.md").read_text()
    assert "**Flag**: compfair_tox4k was scored by detoxify:original" in summary
    assert "trained on the TCCC comments" in summary


def test_kendall_tau_b_over_rows_equals_scipy_with_ties_and_constant_rows():
    """The bootstrap's vectorised tau-b gives, row by row, what scipy.stats.kendalltau gives: rows of few
    distinct values (many ties), tied infinities, constant rows and a row with a missing value (no tau: NaN)."""
    from scipy.stats import kendalltau

    from compress.report.scorer_agreement import kendall_tau_b

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, size=(400, 7)).astype(float), rng.integers(0, 3, size=(400, 7)).astype(float)
    x[0], y[1] = 2.0, 1.0
    x[2, :2], x[3, :3], y[4, 5] = np.inf, -np.inf, np.nan  # tied infinities; a missing value
    expected = [kendalltau(a, b).statistic for a, b in zip(x, y)]
    assert np.isnan(expected[0]) and np.isnan(expected[1]) and np.isnan(expected[4]) and np.isfinite(expected[2])
    np.testing.assert_allclose(kendall_tau_b(x, y), expected, rtol=1e-12, atol=1e-12, equal_nan=True)
