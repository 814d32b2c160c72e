"""Records name only the data source actually read, and packing does not depend on the worker count."""

from compress.common.lm_data import DataArguments, data_source, pack_into_blocks


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


def _pack_by_hand(token_docs: list[list[int]], block_size: int) -> list[list[int]]:
    """run_clm.py's packing, transcribed: each run of 1,000 documents concatenated and cut into blocks, each run's
    remainder dropped."""
    blocks = []
    for start in range(0, len(token_docs), 1000):
        flat = [t for doc in token_docs[start:start + 1000] for t in doc]
        blocks += [flat[i:i + block_size] for i in range(0, len(flat) // block_size * block_size, block_size)]
    return blocks


def test_blocks_do_not_depend_on_the_worker_count(tiny_gpt2):
    import datasets
    from transformers import AutoTokenizer

    from compress.common.tiny_models import corpus_lines

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    lines = corpus_lines()
    # In memory on purpose: for a dataset backed by files, `datasets.map` takes the shard count from the cache
    # files an earlier call left under the same fingerprint (which ignores num_proc; load_from_cache_file=False
    # does not stop it), so after a one-worker call an eight-worker call packs in one shard as well.
    raw = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": [lines[i % len(lines)] for i in range(n)]})
                                for split, n in (("train", 2340), ("validation", 261))})
    expected = {}
    for split in raw:
        token_docs = [tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                      for doc in raw[split]["text"]]
        expected[split] = _pack_by_hand(token_docs, 16)
        # The setup can fail: packing each worker's shard on its own, as a `datasets.map` with num_proc does
        # (3 shards of 780 or 87 documents, not multiples of 1,000), gives other blocks.
        per_shard = datasets.Dataset.from_dict({"ids": token_docs}).map(
            lambda batch: {"block": _pack_by_hand(batch["ids"], 16)}, batched=True, num_proc=3, remove_columns="ids")
        assert per_shard["block"] != expected[split], split
    for workers in (1, 3, 8):
        packed = pack_into_blocks(raw, tokenizer, 16, num_proc=workers)
        for split in raw:
            assert packed[split]["input_ids"] == expected[split], (split, workers)
            assert packed[split]["labels"] == expected[split], (split, workers)
            assert all(mask == [1] * 16 for mask in packed[split]["attention_mask"]), (split, workers)


def test_prune_configs_do_not_claim_published_perplexities():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "trainer_configs" / "prune").glob("*.yaml"))
    assert configs
    for path in configs:
        text = path.read_text()
        assert "perplexities comparable with published" not in text, path
        assert "NOT comparable with published" in text and "word perplexity" in text, path


def test_packing_ignores_shard_files_left_by_per_shard_packing(tmp_path, tiny_gpt2):
    from pathlib import Path

    import datasets
    from transformers import AutoTokenizer

    from compress.common.tiny_models import corpus_lines

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    lines = corpus_lines()
    text = tmp_path / "train.txt"
    text.write_text("\n".join(lines[i % len(lines)] for i in range(1300)) + "\n")
    raw = datasets.load_dataset("text", data_files=str(text), cache_dir=str(tmp_path / "cache"))
    token_docs = [tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                  for doc in raw["train"]["text"]]
    expected = _pack_by_hand(token_docs, 16)
    packed = pack_into_blocks(raw, tokenizer, 16)
    fingerprint = packed["train"]._fingerprint
    one_file = Path(packed["train"].cache_files[0]["filename"])
    assert one_file.name == f"cache-{fingerprint}.arrow"
    one_file.unlink()
    # What the per-shard packing left in a cache: under the same fingerprint, one file per worker's shard (default
    # suffix), each shard packed on its own.
    def pack_shard(batch):
        blocks = _pack_by_hand(batch["ids"], 16)
        return {"input_ids": blocks, "attention_mask": [[1] * 16 for _ in blocks], "labels": blocks}

    stale = datasets.Dataset.from_dict({"ids": token_docs}).map(
        pack_shard, batched=True, num_proc=3, remove_columns="ids", cache_file_name=str(one_file))
    assert sorted(p.name for p in one_file.parent.glob(f"cache-{fingerprint}*")) == [
        f"cache-{fingerprint}_{rank:05d}_of_00003.arrow" for rank in range(3)]
    assert stale["input_ids"] != expected
    for overwrite_cache in (False, True):
        again = pack_into_blocks(raw, tokenizer, 16, overwrite_cache=overwrite_cache)
        assert again["train"]["input_ids"] == expected, overwrite_cache
