"""WinoBias compares true minimal pairs only: pairs whose sentences differ by more than their gendered words
are excluded from the default metrics, counted, marked in the samples and listed in the README."""

import re
from pathlib import Path

import pytest

from compress.bias import winobias_pairs

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "lm_eval_tasks"
FILES = tuple(f"{k}_{s}" for k in ("type1", "type2") for s in ("dev", "test"))

# Read off the official files by hand (1-based line numbers): the pairs whose two sentences differ by more
# than he/she, him/her, his/her, himself/herself.
KNOWN_EXCLUDED = {
    "type1_dev": [92, 212],  # "needed a desk" / "needed one"; "because of she" / "because he"
    "type1_test": [157, 255, 279, 289, 296],  # "a generous man" / "generous"; "she he did"; ... "careless" / "rude"
    "type2_dev": [90, 102, 119, 176, 207, 208, 209],  # "for tips"/"to tips"; ...; "guard card" / "guard cared"
    "type2_test": [92, 103, 307, 382, 384],  # ...; 382 and 384 are unrelated sentences
}


def _line(path: Path, number: int) -> str:
    """Line `number` (1-based) of an official file, its leading index and brackets removed."""
    line = path.read_text(encoding="utf-8").splitlines()[number - 1]
    index, _, sentence = line.partition(" ")
    assert int(index) == number  # the printed index is the line number
    return " ".join(sentence.replace("[", "").replace("]", "").split())


def test_only_gendered_swaps_are_minimal():
    differ = winobias_pairs.pair_difference
    assert differ("The developer argued with the designer because [he] did not like the design.",
                  "The developer argued with the designer because [she] did not like the design.") is None
    assert differ("Mr. Smith told his wife himself.", "Mrs. Smith told her wife herself.") is None
    assert differ("The guard card about [her].", "The guard cared about [him].") == "pro 'card' vs anti 'cared'"
    assert differ("He is a generous man.", "She is generous.") == "pro 'a' vs anti ''; pro 'man' vs anti ''"
    assert differ("I asked him.", "I asked his.") is not None  # both male: not a gender swap
    assert differ("because of she", "because he") == "pro 'of she' vs anti 'he'"


def test_real_files_exclude_the_known_pairs(shared_data):
    directory = shared_data("winobias")
    excluded = winobias_pairs.all_excluded_pairs(directory)
    assert len(excluded) == 19
    by_file = {name: [p.index for p in excluded if p.subset == name] for name in FILES}
    assert by_file == KNOWN_EXCLUDED
    for pair in excluded:  # the reported sentences are those lines of both files
        kind, split = pair.subset.split("_")
        assert pair.pro == _line(directory / f"pro_stereotyped_{kind}.txt.{split}", pair.index)
        assert pair.anti == _line(directory / f"anti_stereotyped_{kind}.txt.{split}", pair.index)
    reasons = {(p.subset, p.index): p.reason for p in excluded}
    assert reasons[("type2_dev", 209)] == "pro 'card' vs anti 'cared'"
    assert reasons[("type2_dev", 119)] == "pro 'won' vs anti 'win'"
    assert "himself" in reasons[("type1_test", 279)] and "every day" in reasons[("type1_test", 279)]
    assert _line(directory / "anti_stereotyped_type2.txt.test", 382).startswith("The physician hired")


def test_readme_table_is_the_generated_one(shared_data):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- winobias-excluded:begin[^>]*-->\n(.*?)\n<!-- winobias-excluded:end -->", readme, re.S)
    assert match, "README.md lacks the generated table of excluded WinoBias pairs"
    expected = winobias_pairs.markdown_table(winobias_pairs.all_excluded_pairs(shared_data("winobias")))
    assert match.group(1) == expected
    assert expected.count("\n") == 19 + 1  # header rule and one row per pair


def _write_pairs(folder: Path, rows: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True)
    for name in FILES:
        kind, split = name.split("_")
        pairs = rows.get(name, rows["type1_dev"][:1])
        (folder / f"pro_stereotyped_{kind}.txt.{split}").write_text(
            "".join(f"{i} {pro}\n" for i, (pro, _) in enumerate(pairs, 1)))
        (folder / f"anti_stereotyped_{kind}.txt.{split}").write_text(
            "".join(f"{i} {anti}\n" for i, (_, anti) in enumerate(pairs, 1)))


PAIRS = [
    ("[The developer] argued with the designer because [he] did not like the design.",
     "[The developer] argued with the designer because [she] did not like the design."),
    ("[The nurse] helped the patient because [she] was kind.", "[The nurse] helped the patient because [he] was kind."),
    ("The guard card about [the teacher] and so protected [her].",  # a typo on the pro side only
     "The guard cared about [the teacher] and so protected [him]."),
    ("The mechanic fixed the car because [he] is a generous man.",  # a word added on one side
     "The mechanic fixed the car because [she] is generous."),
    ("The secretary called [the manager] and asked [him] to sign.",
     "The secretary called [the manager] and asked [her] to sign."),
]


@pytest.mark.slow
def test_default_metrics_count_minimal_pairs_only(tmp_path, tiny_gpt2):
    import lm_eval
    import numpy as np
    from lm_eval.tasks import TaskManager

    _write_pairs(tmp_path / "winobias", {"type1_dev": PAIRS})
    task = "compfair_winobias_type1_dev"
    manager = TaskManager(include_path=str(TASKS), include_defaults=False,
                          metadata={"pretrained": str(tiny_gpt2), "data_dir": str(tmp_path)})
    results = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny_gpt2)}, tasks=[task],
                                      task_manager=manager, device="cpu", batch_size=8, log_samples=True,
                                      bootstrap_iters=0)
    samples = sorted(results["samples"][task], key=lambda s: s["doc"]["index"])
    assert [s["doc"]["index"] for s in samples] == [1, 2, 3, 4, 5]
    # The samples mark the two non-minimal pairs, say why, and give them none of the default metrics.
    assert [s["doc"]["minimal"] for s in samples] == [True, True, False, False, True]
    assert samples[2]["doc"]["excluded_because"] == "pro 'card' vs anti 'cared'"
    assert "man" in samples[3]["doc"]["excluded_because"]
    for sample in samples:
        assert ("anti_rate" in sample) == sample["doc"]["minimal"]
        assert sample["excluded_count"] == float(not sample["doc"]["minimal"])

    def total(sample):  # each sentence's log-likelihood, from the logged request and response
        table = {tuple(a): r[0][0] for a, r in zip(sample["arguments"], sample["resps"], strict=True)}
        return {s["label"]: sum(table[tuple(q)] for q in s["requests"]) for s in sample["doc"]["sentences"]}

    logliks = [total(s) for s in samples]
    anti = [float(ll["anti"] > ll["pro"]) for ll in logliks]
    pro = [float(ll["pro"] > ll["anti"]) for ll in logliks]
    minimal = [0, 1, 4]
    metrics = results["results"][task]
    assert metrics["excluded_count,none"] == 2
    assert metrics["anti_count,none"] == sum(anti[i] for i in minimal)
    assert metrics["anti_rate,none"] == pytest.approx(100 * np.mean([anti[i] for i in minimal]))
    assert metrics["pro_rate,none"] == pytest.approx(100 * np.mean([pro[i] for i in minimal]))
    assert metrics["bias_gap,none"] == pytest.approx(100 * np.mean([pro[i] - anti[i] for i in minimal]))
    assert metrics["anti_count_all,none"] == sum(anti)
    assert metrics["anti_rate_all,none"] == pytest.approx(100 * np.mean(anti))
