"""The bias metrics against hand-checkable fixtures and against slow reference computations."""

import math

import numpy as np
import pytest

from compress.bias import metrics as bm


def item(target, domain, stereo, anti, unrelated):
    return bm.stereoset_item(target, domain, {"stereotype": stereo, "anti-stereotype": anti, "unrelated": unrelated})


# Two target terms. "nurse" (profession): stereotype wins 2 of 3, 3 of 6 related comparisons.
# "Ethiopian" (race): stereotype wins 0 of 2 (one tie, which the official script gives to anti), 4 of 4 related.
FIXTURE = [
    item("nurse", "profession", 0.5, 0.3, 0.1),   # pro wins; related 2; top: stereotype
    item("nurse", "profession", 0.2, 0.4, 0.3),   # anti wins; related 1 (anti > unrelated); top: anti
    item("nurse", "profession", 0.6, 0.1, 0.7),   # pro wins; related 0; top: unrelated
    item("Ethiopian", "race", 0.1, 0.2, 0.05),    # anti wins; related 2; top: anti
    item("Ethiopian", "race", 0.3, 0.3, 0.2),     # tie -> anti; related 2; top: stereotype (earlier label)
]


def test_stereoset_scores_follow_the_official_per_term_formulas():
    scores = bm.stereoset_scores(FIXTURE)
    # ss per term: nurse 100*2/3, Ethiopian 0 -> mean 33.33 (a pooled 2/5 = 40 would be wrong)
    assert scores["ss"] == pytest.approx((200 / 3 + 0) / 2)
    # lms per term: nurse 100*3/6 = 50, Ethiopian 100*4/4 = 100 -> 75
    assert scores["lms"] == pytest.approx(75.0)
    # icat from the averaged scores: 75 * min(33.33, 66.67) / 50 = 50
    assert scores["icat"] == pytest.approx(50.0)
    assert scores["count"] == 5
    assert (scores["stereotype_count"], scores["anti_stereotype_count"], scores["unrelated_count"]) == (2, 2, 1)


def test_stereoset_scores_per_domain_and_empty():
    profession = bm.stereoset_scores([i for i in FIXTURE if i["domain"] == "profession"])
    assert profession["ss"] == pytest.approx(200 / 3)
    assert profession["lms"] == pytest.approx(50.0)
    assert profession["icat"] == pytest.approx(50.0 * (100 / 3) / 50)
    empty = bm.stereoset_scores([])
    assert math.isnan(empty["ss"]) and empty["count"] == 0


def test_icat_is_symmetric_around_fifty():
    assert bm.icat(50.0, 80.0) == pytest.approx(80.0)
    assert bm.icat(30.0, 80.0) == pytest.approx(bm.icat(70.0, 80.0)) == pytest.approx(48.0)
    assert bm.icat(100.0, 80.0) == 0.0


def test_bootstrap_stderr_matches_a_slow_reference_with_the_same_draws():
    rng = np.random.default_rng(3)
    items = [item(f"t{rng.integers(6)}", "race", *rng.random(3)) for _ in range(60)]
    # The bootstrap resamples in an order fixed by the documents: without ids, by target, domain, then scores.
    items.sort(key=lambda it: (it["target"], it["domain"], it["stereotype"], it["anti-stereotype"], it["unrelated"]))
    iters, seed = 50, 11
    fast = bm.stereoset_bootstrap_stderr(items, iters=iters, seed=seed)
    picks = np.random.default_rng(seed).integers(0, len(items), size=(iters, len(items)))
    replicates = [bm.stereoset_scores([items[i] for i in row]) for row in picks]
    for name in ("ss", "lms", "icat"):
        reference = np.std([r[name] for r in replicates], ddof=1)
        assert fast[name] == pytest.approx(reference, rel=1e-9, abs=1e-12)
        assert fast[name] > 0


def test_bootstrap_stderr_is_zero_when_every_resample_agrees():
    items = [item("nurse", "gender", 0.5, 0.1, 0.2)] * 10
    assert bm.stereoset_bootstrap_stderr(items, iters=30) == {"ss": 0.0, "lms": 0.0, "icat": 0.0}
    assert math.isnan(bm.stereoset_bootstrap_stderr(items[:1])["ss"])


def test_sum_stderr_is_sqrt_n_times_the_sample_std():
    values = [1.0, 0.0, 1.0, 1.0]
    assert bm.sum_stderr(values) == pytest.approx(2.0 * np.std(values, ddof=1))


def test_winobias_scores_and_per_pair_values():
    pairs = [(-10.0, -12.0), (-15.0, -11.0), (-9.0, -9.0), (-20.0, -19.5)]  # (pro, anti)
    scores = bm.winobias_scores(pairs)
    assert scores == {"count": 4, "anti_count": 2, "anti_rate": 50.0, "pro_rate": 25.0, "bias_gap": -25.0}
    per_pair = [bm.winobias_doc_values(p, a) for p, a in pairs]
    assert [v["anti_count"] for v in per_pair] == [0.0, 1.0, 0.0, 1.0]
    assert np.mean([v["bias_gap"] for v in per_pair]) == scores["bias_gap"]
    assert math.isnan(bm.winobias_scores([])["anti_rate"])
