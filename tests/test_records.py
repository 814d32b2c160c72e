"""Records name only the data source actually read, and packing does not depend on the worker count."""

import pytest

from compress.common.lm_data import DataArguments, data_source, load_raw_datasets, pack_into_blocks


def test_records_name_only_the_source_read(tmp_path):
    from compress.common.lm_data import describe_data

    text = tmp_path / "train.txt"
    text.write_text("one document\nanother document\n")
    both = DataArguments(dataset_name="Salesforce/wikitext", dataset_config_name="wikitext-2-raw-v1",
                         train_file=str(text))
    assert data_source(both) == {"train_file": str(text), "validation_file": None}
    record = describe_data(both)
    assert record["train_file"] == str(text)
    assert "dataset_name" not in record and "dataset_config_name" not in record  # train_file wins when read
    hub = DataArguments(dataset_name="Salesforce/wikitext", dataset_config_name="wikitext-2-raw-v1")
    assert data_source(hub) == {"dataset_name": "Salesforce/wikitext", "dataset_config_name": "wikitext-2-raw-v1"}
    assert "train_file" not in describe_data(hub)


@pytest.mark.slow
def test_blocks_do_not_depend_on_the_worker_count(tmp_path, tiny_gpt2):
    from transformers import AutoTokenizer

    from compress.common.tiny_models import corpus_lines

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    lines = corpus_lines()
    text = tmp_path / "train.txt"  # more than 2 x 1,000 documents: `datasets` shards a map only past one batch
    text.write_text("\n".join(lines[i % len(lines)] for i in range(2600)) + "\n")
    raw = load_raw_datasets(DataArguments(train_file=str(text), validation_split_percentage=10), seed=1)
    one, two = (pack_into_blocks(raw, tokenizer, 16, num_proc=n, overwrite_cache=True) for n in (1, 2))
    # By hand: each run of 1,000 documents (+ EOS each) concatenated and cut into 16-token blocks, remainder dropped.
    for split in ("train", "validation"):
        docs = raw[split]["text"]
        expected = []
        for start in range(0, len(docs), 1000):
            flat = [t for doc in docs[start:start + 1000]
                    for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
            expected += [flat[i:i + 16] for i in range(0, len(flat) // 16 * 16, 16)]
        assert one[split]["input_ids"] == expected, split
        assert two[split]["input_ids"] == expected, split


def test_prune_configs_do_not_claim_published_perplexities():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "trainer_configs" / "prune").glob("*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        assert "perplexities comparable with published" not in text, path
        assert "NOT comparable with published" in text and "word perplexity" in text, path
