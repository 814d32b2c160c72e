"""The demo's bundled data and its teacher's recipe: provenance that can be checked, splits that do not leak,
and the unigram baseline the teacher's perplexity is judged against."""

import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path

import pytest

from compress.study import demo_teacher

DEMO_DATA = Path(str(resources.files("compress.study") / "demo_data"))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_every_real_data_folder_has_its_source_and_license():
    for folder, license_name in (("wikitext2", "LICENSE.md"), ("winobias", "LICENSE"), ("stereoset", "SOURCE.md")):
        source = (DEMO_DATA / folder / "SOURCE.md").read_text()
        assert "License" in source and "Taken from" in source, folder
        assert (DEMO_DATA / folder / license_name).is_file(), folder
    assert "CC BY-SA 4.0" in (DEMO_DATA / "stereoset" / "SOURCE.md").read_text()


def test_the_bundled_wikitext_is_the_file_its_source_names():
    source = (DEMO_DATA / "wikitext2" / "SOURCE.md").read_text()
    digest = re.search(r"SHA-256\s+`([0-9a-f]{64})`", source).group(1)
    data = (DEMO_DATA / demo_teacher.WIKITEXT).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    lines = data.count(b"\n")
    assert f"{len(data):,} bytes" in source and f"{lines:,} lines" in source


def _article_titles(lines):
    return [line for line in lines if re.fullmatch(r"= [^=].* =", line)]


def test_articles_are_split_at_a_boundary_with_the_last_tenth_held_out():
    # articles of unequal length, so a cut by line count would fall inside one
    paragraph = " Text of article {} , with a comma @-@ and more . \n"
    articles = [f" = Article {i} = \n \n = = Part = = \n" + paragraph.format(i) * (i % 4 + 1) for i in range(40)]
    train, heldout = demo_teacher.split_articles("".join(articles))
    # 40 articles, 5% held out: the last two, each title and paragraph on one side only.
    assert _article_titles(heldout) == ["= Article 38 =", "= Article 39 ="]
    assert _article_titles(train) == [f"= Article {i} =" for i in range(38)]
    assert "Text of article 17, with a comma-and more." in train  # detokenized as lm-eval's wikitext task does
    assert all(line.strip() for line in train + heldout)


def test_the_bundled_text_splits_into_disjoint_articles():
    train, heldout = demo_teacher.split_articles(demo_teacher.bundled_text())
    # 60 articles: 57 train, the last 3 held out (titles can repeat, "<unk> <unk>", so count lines)
    assert len(_article_titles(train)) == 57 and len(_article_titles(heldout)) == 3
    assert _article_titles(heldout)[0] == "= 1985 <unk> assassination plot ="
    assert "= 1985 <unk> assassination plot =" not in train


def test_unigram_perplexity_by_hand():
    # vocabulary of 4; training tokens 0,0,1 -> add-one counts (3, 2, 1, 1) / 7
    train = [[0, 0, 1]]
    heldout = [[3, 0, 2], [1, 1, 3]]  # predicted: 0, 2, 1, 3 (each block's first token is context only)
    p = {0: 3 / 7, 1: 2 / 7, 2: 1 / 7, 3: 1 / 7}
    expected = math.exp(-sum(math.log(p[t]) for t in (0, 2, 1, 3)) / 4)
    assert demo_teacher.unigram_perplexity(train, heldout, 4) == pytest.approx(expected, rel=1e-12)


@pytest.mark.skipif(not (SHARED / "stereoset" / "stereoset.jsonl").is_file(), reason="../shared/data/stereoset absent")
def test_the_stereoset_sample_is_every_example_of_its_terms_in_the_source():
    rows = (SHARED / "stereoset" / "stereoset.jsonl").read_text(encoding="utf-8").splitlines()
    sample = json.loads((DEMO_DATA / "stereoset" / "dev.json").read_text(encoding="utf-8"))["data"]
    terms = set()
    for split, examples in sample.items():
        for example in examples:
            kind, line = example["id"].rsplit("-", 1)
            row = json.loads(rows[int(line) - 1])
            assert kind == split == row["type"]
            assert {s["gold_label"]: s["sentence"] for s in example["sentences"]} == {
                label: row[label] for label in ("stereotype", "anti-stereotype", "unrelated")}
            assert (example["target"], example["bias_type"], example["context"]) == (
                row["target"], row["bias_type"], row["context"])
            terms.add(row["target"])
    everything = [json.loads(r) for r in rows]
    assert len(terms) == 18
    assert sum(len(v) for v in sample.values()) == sum(r["target"] in terms for r in everything) == 945


@pytest.mark.skipif(not (SHARED / "winobias").is_dir(), reason="../shared/data/winobias absent")
def test_the_winobias_sample_is_the_official_lines_its_source_names():
    files = sorted(p.name for p in (DEMO_DATA / "winobias").glob("*stereotyped*"))
    assert len(files) == 8
    for name in files:
        official = (SHARED / "winobias" / name).read_text(encoding="utf-8").splitlines()
        expected = [line for line in official if (int(line.split()[0]) - 1) % 8 < 2]
        assert (DEMO_DATA / "winobias" / name).read_text(encoding="utf-8").splitlines() == expected, name
        assert len(expected) == 100
