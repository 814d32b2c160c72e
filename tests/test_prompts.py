"""Prompt curation on the real RTP and TCCC samples in ../shared/data: selection, halving, sizes,
thresholds, seed stability, and one-line errors for bad sources."""

import csv
import json

import pytest
from scipy import stats

from compress.toxicity import prompts
from compress.toxicity.prompts import PromptSourceError, main


@pytest.fixture(scope="module")
def rtp_file(shared_data):
    return shared_data("rtp") / "toxic.jsonl"


@pytest.fixture(scope="module")
def tccc_file(shared_data):
    return shared_data("tccc") / "train.csv"


@pytest.fixture(scope="module")
def gpt2_tokenizer(gpt2_tokenizer_dir):
    return prompts.load_tokenizer(str(gpt2_tokenizer_dir))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(*argv):
    main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------- RTP

def test_rtp_cli_samples_challenging_prompts_and_writes_a_manifest(rtp_file, gpt2_tokenizer_dir, tmp_path):
    source = [json.loads(line) for line in rtp_file.read_text().splitlines()]
    run_cli("rtp", "--source", rtp_file, "--out", tmp_path, "--n", 50, "--seed", 7, "--tokenizer", gpt2_tokenizer_dir)
    rows = read_jsonl(tmp_path / "rtp.jsonl")
    assert len(rows) == 50 and len({r["id"] for r in rows}) == 50
    for row in rows:
        original = source[row["source_index"]]
        assert original["challenging"] is True
        assert row["prompt"] == original["prompt"]["text"]
        assert row["prompt_toxicity"] == original["prompt"]["toxicity"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())["rtp"]
    assert manifest["source_sha256"] == prompts.file_sha256(rtp_file)
    assert manifest["seed"] == 7 and manifest["counts"] == {"rtp": 50}
    assert manifest["available"]["challenging"] == sum(r["challenging"] for r in source)
    assert manifest["tokenizer"] == str(gpt2_tokenizer_dir.resolve())


def test_rtp_selection_is_stable_for_a_seed_and_moves_with_it(rtp_file):
    records, _ = prompts.read_rtp(str(rtp_file))
    ids = [r["id"] for r in prompts.select_rtp(records, n=100, seed=1)]
    assert ids == [r["id"] for r in prompts.select_rtp(records, n=100, seed=1)]
    assert ids != [r["id"] for r in prompts.select_rtp(records, n=100, seed=2)]
    # A larger sample from the same seed extends the smaller one: the walk is the same permutation.
    assert set(ids) <= {r["id"] for r in prompts.select_rtp(records, n=300, seed=1)}


def test_rtp_prompt_toxicity_bound_and_non_challenging_records(shared_data):
    records = []
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        records += prompts.read_rtp(str(shared_data("rtp") / name))[0]
    eligible = [r for r in records if r["challenging"] and r["prompt"]["toxicity"] < 0.5]
    chosen = prompts.select_rtp(records, n=len(eligible), seed=0, max_prompt_toxicity=0.5)
    assert sorted(r["id"] for r in chosen) == sorted(f"{r['filename']}:{r['begin']}" for r in eligible)
    with pytest.raises(PromptSourceError, match=rf"asked for {len(eligible) + 1} prompts .* has only {len(eligible)}"):
        prompts.select_rtp(records, n=len(eligible) + 1, seed=0, max_prompt_toxicity=0.5)
    assert len(prompts.select_rtp(records, n=10_000, seed=0, allow_fewer=True)) == sum(
        r["challenging"] for r in records)


def test_rtp_sizes_beyond_the_source_are_an_error_on_the_command_line(rtp_file, gpt2_tokenizer_dir, tmp_path):
    with pytest.raises(SystemExit, match="asked for 5000 prompts but the source's challenging prompts has only 1196"):
        run_cli("rtp", "--source", rtp_file, "--out", tmp_path, "--n", 5000, "--tokenizer", gpt2_tokenizer_dir)
    assert not (tmp_path / "rtp.jsonl").exists()


@pytest.mark.parametrize("content, expected", [
    (None, "is not a file: expected RealToxicityPrompts prompts.jsonl"),
    ('{"prompt": {"text": "hi"}, "challenging": true}\nnot json\n', r"prompts.jsonl:2: not JSON"),
    ('{"text": "hi"}\n', r"prompts.jsonl:1: expected RealToxicityPrompts"),
])
def test_bad_rtp_sources_fail_with_one_line_naming_the_file(content, expected, gpt2_tokenizer_dir, tmp_path):
    source = tmp_path / "prompts.jsonl"
    if content is not None:
        source.write_text(content)
    with pytest.raises(SystemExit, match=expected) as err:
        run_cli("rtp", "--source", source, "--out", tmp_path / "out", "--tokenizer", gpt2_tokenizer_dir)
    assert str(source) in str(err.value) and "\n" not in str(err.value)


def test_unreachable_hub_dataset_says_how_to_use_a_local_copy():
    with pytest.raises(PromptSourceError, match=r"could not read RTP from the hub .* --source /path/to/prompts.jsonl"):
        prompts.read_rtp("allenai/real-toxicity-prompts")


# ---------------------------------------------------------------------------------------------- TCCC

def test_halving_keeps_the_first_half_of_the_gpt2_tokens(tccc_file, gpt2_tokenizer):
    frame = prompts.read_tccc(str(tccc_file))
    for text in frame["comment_text"].head(40):
        prompt, half, total = prompts.halve(text, gpt2_tokenizer)
        ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (half, total) == (len(ids) // 2, len(ids))
        assert gpt2_tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids[:half]
        assert text.startswith(prompt)


def test_tccc_cli_writes_three_sets_with_their_thresholds(tccc_file, gpt2_tokenizer_dir, tiny_detoxify, tmp_path):
    frame = prompts.read_tccc(str(tccc_file))
    scorer_spec = f"detoxify:{tiny_detoxify}"
    run_cli("tccc", "--source", tccc_file, "--out", tmp_path, "--n", 20, "--seed", 3, "--tokenizer", gpt2_tokenizer_dir,
            "--scorer", scorer_spec, "--safe-threshold", 0.02)
    sets = {name: read_jsonl(tmp_path / f"{name}.jsonl") for name in prompts.TCCC_SETS}
    assert {name: len(rows) for name, rows in sets.items()} == {"tox4k": 20, "random4k": 20, "safe4k": 20}
    assert all(row["comment_toxic"] == 1 == frame["toxic"].iat[row["source_index"]] for row in sets["tox4k"])
    assert all(row["comment_toxicity"] < 0.02 for row in sets["safe4k"])
    from compress.toxicity.scorers import load_scorer

    rescored = load_scorer(scorer_spec, device="cpu").score(
        [frame["comment_text"].iat[row["source_index"]] for row in sets["safe4k"]])
    assert rescored == pytest.approx([row["comment_toxicity"] for row in sets["safe4k"]], abs=1e-5)
    for row in sets["random4k"]:
        assert row["id"] == frame["id"].iat[row["source_index"]]
        assert row["prompt_tokens"] == row["comment_tokens"] // 2 > 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())["tccc"]
    assert manifest["counts"] == {"tox4k": 20, "random4k": 20, "safe4k": 20}
    assert manifest["thresholds"]["safe4k_below"] == 0.02 and manifest["scorer"] == scorer_spec
    assert manifest["source_sha256"] == prompts.file_sha256(tccc_file)
    assert manifest["available"] == {"comments": len(frame), "toxic": int(frame["toxic"].sum())}


def test_tccc_sets_are_seed_stable_and_sample_independently(tccc_file, gpt2_tokenizer):
    frame = prompts.read_tccc(str(tccc_file))
    first = prompts.select_tccc(frame, gpt2_tokenizer, n=15, seed=5, sets=("tox4k", "random4k"))
    again = prompts.select_tccc(frame, gpt2_tokenizer, n=15, seed=5, sets=("tox4k", "random4k"))
    other = prompts.select_tccc(frame, gpt2_tokenizer, n=15, seed=6, sets=("tox4k", "random4k"))
    ids = {name: [r["id"] for r in rows] for name, rows in first.items()}
    assert ids == {name: [r["id"] for r in rows] for name, rows in again.items()}
    assert ids["random4k"] != [r["id"] for r in other["random4k"]]
    # random4k is a uniform draw, so with 26 of 267 comments toxic it holds far fewer toxic ones than tox4k.
    assert sum(r["comment_toxic"] for r in first["random4k"]) < 15

    # 100 of the 267 comments drawn without replacement: the toxic count is hypergeometric around 100 x 26/267
    drawn = prompts.select_tccc(frame, gpt2_tokenizer, n=100, seed=5, sets=("random4k",))["random4k"]
    assert len(drawn) == len({r["source_index"] for r in drawn}) == 100
    assert all(r["comment_toxic"] == frame["toxic"].iat[r["source_index"]] for r in drawn)
    population, toxic_total = len(frame), int(frame["toxic"].sum())
    assert (population, toxic_total) == (267, 26)
    share = stats.hypergeom(population, toxic_total, 100)
    toxic_drawn = sum(r["comment_toxic"] for r in drawn)
    assert share.ppf(0.001) <= toxic_drawn <= share.isf(0.001), toxic_drawn  # 4 ... 17 of 100
    # Each set walks its own permutation. Were tox4k and random4k one walk, random4k's toxic comments would be
    # the walk's first toxic ones: all inside tox4k's first 15, or all of tox4k inside them.
    toxic_in_random = {r["source_index"] for r in drawn if r["comment_toxic"]}
    tox15 = {r["source_index"] for r in first["tox4k"]}
    assert not (toxic_in_random <= tox15 or tox15 <= toxic_in_random)


def test_tccc_sizes_beyond_the_source(tccc_file, gpt2_tokenizer_dir, tmp_path):
    base = ["tccc", "--source", tccc_file, "--out", tmp_path, "--tokenizer", gpt2_tokenizer_dir, "--sets", "tox4k"]
    with pytest.raises(SystemExit, match=r"tox4k: asked for 4000 prompts but the source's comments labelled toxic "
                                         r"has only 26; lower --n, or pass --allow-fewer"):
        run_cli(*base)
    run_cli(*base, "--allow-fewer")
    assert len(read_jsonl(tmp_path / "tox4k.jsonl")) == 26


def test_safe4k_with_no_comment_under_the_threshold_is_an_error(tccc_file, gpt2_tokenizer_dir, tiny_detoxify,
                                                                 tmp_path):
    # The tiny classifier never scores below 0.001, the paper's threshold.
    with pytest.raises(SystemExit, match=r"safe4k: .* has no eligible prompt"):
        run_cli("tccc", "--source", tccc_file, "--out", tmp_path, "--tokenizer", gpt2_tokenizer_dir, "--sets", "safe4k",
                "--scorer", f"detoxify:{tiny_detoxify}", "--allow-fewer")


@pytest.mark.parametrize("rows, expected", [
    (None, "is not a file: expected the Jigsaw TCCC train.csv"),
    ([["id", "comment_text"], ["1", "hello"]], r"missing columns \['toxic', 'severe_toxic'"),
    ([["id", "comment_text", *prompts.TCCC_LABELS], ["1", "hello", "yes", 0, 0, 0, 0, 0]],
     "column 'toxic' must hold 0 or 1"),
])
def test_bad_tccc_sources_fail_with_one_line_naming_the_file(rows, expected, gpt2_tokenizer_dir, tmp_path):
    source = tmp_path / "train.csv"
    if rows is not None:
        with open(source, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    with pytest.raises(SystemExit, match=expected) as err:
        run_cli("tccc", "--source", source, "--out", tmp_path / "out", "--tokenizer", gpt2_tokenizer_dir)
    assert str(source) in str(err.value) and "\n" not in str(err.value)


def test_a_tokenizer_that_cannot_be_loaded_says_to_pass_a_local_one(tccc_file, tmp_path):
    with pytest.raises(SystemExit, match=r"could not load the tokenizer '/nowhere/gpt2' .* --tokenizer /path/to/"):
        run_cli("tccc", "--source", tccc_file, "--out", tmp_path, "--tokenizer", "/nowhere/gpt2")


def test_reading_a_missing_set_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(PromptSourceError, match=r"tox4k.jsonl does not exist: run `compfair-prompts tccc"):
        prompts.read_prompt_set("tox4k", tmp_path)
