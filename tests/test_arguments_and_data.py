"""Config parsing (YAML + flag overrides) and language-modelling data packing shared by the trainers."""

import json
from dataclasses import dataclass, field

import pytest
from transformers import AutoTokenizer

from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments, build_lm_datasets, load_raw_datasets


@dataclass
class _Toy:
    name: str = field(metadata={"help": "required"})
    steps: int = 3
    rate: float = 0.5
    layers: list[int] = field(default_factory=lambda: [0, 1])


def test_yaml_values_and_flag_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: teacher\nsteps: 7\nrate: 1e-4\nlayers: [2, 5]\n")
    (toy,) = parse_config_and_flags((_Toy,), [str(config), "--steps", "9"])
    assert (toy.name, toy.steps, toy.rate, toy.layers) == ("teacher", 9, 1e-4, [2, 5])


def test_flags_alone_work_without_a_file():
    (toy,) = parse_config_and_flags((_Toy,), ["--name", "x"])
    assert (toy.name, toy.steps) == ("x", 3)


def test_unknown_config_key_is_one_clear_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: a\nstesp: 7\n")
    with pytest.raises(SystemExit, match=r"unknown config key\(s\): stesp"):
        parse_config_and_flags((_Toy,), [str(config)])


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        parse_config_and_flags((_Toy,), [str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SystemExit, match="must hold a mapping"):
        parse_config_and_flags((_Toy,), [str(bad)])


def test_unknown_flag_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="not used"):
        parse_config_and_flags((_Toy,), ["--name", "a", "--bogus", "1"])


def _docs(tmp_path, n=40):
    lines = [f"Document number {i} talks about the weather and the river." for i in range(n)]
    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(lines) + "\n")  # blank lines between documents are dropped
    return path, lines


def test_text_file_is_tokenized_and_packed(tmp_path, tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    path, lines = _docs(tmp_path)
    args = DataArguments(train_file=str(path), block_size=16, validation_split_percentage=10)
    packed = build_lm_datasets(args, tok, seed=0)
    assert set(packed) == {"train", "validation"}
    total = sum(len(tok(line, add_special_tokens=False).input_ids) + 1 for line in lines)  # +1: EOS per doc
    n_blocks = len(packed["train"]) + len(packed["validation"])
    assert total // 16 - 2 <= n_blocks <= total // 16  # each split drops its own remainder
    block = packed["train"][0]
    assert len(block["input_ids"]) == 16 and block["labels"] == block["input_ids"]
    assert tok.eos_token_id in sum(packed["train"]["input_ids"], [])


def test_max_train_samples_and_fraction(tmp_path, tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    path, _ = _docs(tmp_path)
    full = build_lm_datasets(DataArguments(train_file=str(path), block_size=8), tok)
    assert len(build_lm_datasets(DataArguments(train_file=str(path), block_size=8, max_train_samples=3),
                                 tok)["train"]) == 3
    half = build_lm_datasets(DataArguments(train_file=str(path), block_size=8, dataset_fraction=0.5), tok)
    assert len(half["train"]) < 0.7 * len(full["train"])


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_dataset_fraction_keeps_int_n_times_fraction_documents(tmp_path, tiny_gpt2, fraction):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    path, lines = _docs(tmp_path)
    n = len(lines)
    # without a validation file the kept documents are then split into train and validation
    raw = load_raw_datasets(DataArguments(train_file=str(path), dataset_fraction=fraction), seed=3)
    kept = list(raw["train"]["text"]) + list(raw["validation"]["text"])
    assert len(kept) == int(n * fraction) and len(set(kept)) == len(kept) and set(kept) <= set(lines)
    # with one, the training split is exactly the kept documents, and its blocks are theirs
    validation = tmp_path / "validation.txt"
    validation.write_text("The weather was cold.\n")
    args = DataArguments(train_file=str(path), validation_file=str(validation), dataset_fraction=fraction,
                         block_size=8)
    docs = list(load_raw_datasets(args, seed=3)["train"]["text"])
    assert len(docs) == int(n * fraction) and set(docs) <= set(lines)
    tokens = sum(len(tok(doc, add_special_tokens=False).input_ids) + 1 for doc in docs)  # +1: EOS per doc
    assert len(build_lm_datasets(args, tok, seed=3)["train"]) == tokens // 8


def test_jsonl_without_text_column_is_a_clear_error(tmp_path, tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": "hello there"}) + "\n" for _ in range(5)))
    with pytest.raises(SystemExit, match="no text column 'text'.*columns: body"):
        build_lm_datasets(DataArguments(train_file=str(path)), tok)


def test_bad_data_arguments(tmp_path):
    with pytest.raises(ValueError, match="no data"):
        DataArguments()
    with pytest.raises(ValueError, match="expected a .txt"):
        DataArguments(train_file="data.csv")
    with pytest.raises(SystemExit, match="not found"):
        build_lm_datasets(DataArguments(train_file=str(tmp_path / "missing.txt"), block_size=8), tokenizer=None)
