"""Language-modelling data for the trainers: load text, tokenize, pack into fixed-length blocks.

Field names follow `run_clm.py` so that anyone who has used the Hugging Face examples knows them.
Distillation and head pruning both read their data through `build_lm_datasets`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import datasets

PACKING_GROUP = 1000  # documents concatenated before cutting blocks (run_clm.py's map batch size)
ONE_PROCESS_SUFFIX = "_{rank:05d}_of_{num_proc:05d}_packed_in_one_process"  # see pack_into_blocks
TEXT_SUFFIXES = {".txt": "text", ".raw": "text", ".tokens": "text", ".json": "json", ".jsonl": "json"}


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name, e.g. Salesforce/wikitext."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training text: plain text (one document per line) or JSON lines."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation text, same formats."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    dataset_fraction: float = field(
        default=1.0, metadata={"help": "Share of the training documents to keep, sampled with `seed` (0, 1]."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Percent of train held out for validation when there is no validation split."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training block; default: tokenizer max length, at most 1024."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many validation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized datasets."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None:
            raise ValueError("no data: set dataset_name (a hub dataset) or train_file (a local .txt/.jsonl file)")
        if not 0 < self.dataset_fraction <= 1:
            raise ValueError(f"dataset_fraction must be in (0, 1], got {self.dataset_fraction}")
        for path in (self.train_file, self.validation_file):
            if path is not None and Path(path).suffix not in TEXT_SUFFIXES:
                raise ValueError(f"{path}: expected a .txt (one document per line) or .json/.jsonl file "
                                 "(one {\"text\": ...} object per line)")


def data_source(args: DataArguments) -> dict:
    """The source `load_raw_datasets` actually reads, for the records: local files when `train_file` is set
    (the hub fields are then ignored and not recorded), else the hub dataset."""
    if args.train_file is not None:
        return {"train_file": args.train_file, "validation_file": args.validation_file}
    return {"dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name}


def describe_data(args: DataArguments) -> dict:
    """What a record says about the training text: only the source actually read, and how it was cut."""
    return {**data_source(args), "dataset_fraction": args.dataset_fraction, "block_size": args.block_size,
            "max_eval_samples": args.max_eval_samples}


def sample_blocks(train: datasets.Dataset, num_samples: int, seed: int) -> datasets.Dataset:
    """`num_samples` training blocks drawn with `seed` (importance, calibration); a smaller subset is a prefix of a
    larger one."""
    return train.shuffle(seed=seed).select(range(min(num_samples, len(train))))


def load_raw_datasets(args: DataArguments, seed: int = 42) -> datasets.DatasetDict:
    """Train and validation splits of raw documents, from the hub or from local files."""
    if args.train_file is not None:
        data_files = {"train": args.train_file}
        if args.validation_file is not None:
            data_files["validation"] = args.validation_file
        for path in data_files.values():
            if not Path(path).is_file():
                raise SystemExit(f"error: data file {path} not found")
        builder = TEXT_SUFFIXES[Path(args.train_file).suffix]
        raw = datasets.load_dataset(builder, data_files=data_files)
        source = args.train_file
    else:
        try:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:  # hub/network/format errors: one line, with the local alternative
            raise SystemExit(f"error: could not load dataset {args.dataset_name!r} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); give train_file=PATH "
                             "(.txt or .jsonl) to use local text instead") from None
        source = args.dataset_name
    if args.text_column not in raw["train"].column_names:
        raise SystemExit(f"error: {source} has no text column {args.text_column!r} "
                         f"(columns: {', '.join(raw['train'].column_names)}); set text_column")
    # Blank lines in text files and WikiText's empty rows carry no tokens.
    raw = raw.filter(lambda ex: bool(ex[args.text_column] and ex[args.text_column].strip()),
                     desc="dropping empty documents")
    if args.dataset_fraction < 1:
        train = raw["train"].shuffle(seed=seed)
        raw["train"] = train.select(range(max(1, int(len(train) * args.dataset_fraction))))
    if "validation" not in raw:
        split = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
        raw = datasets.DatasetDict(train=split["train"], validation=split["test"])
    return datasets.DatasetDict(train=raw["train"], validation=raw["validation"])


def pack_into_blocks(raw: datasets.DatasetDict, tokenizer, block_size: int, text_column: str = "text",
                     num_proc: int | None = None, overwrite_cache: bool = False) -> datasets.DatasetDict:
    """Tokenize every document, end it with EOS, concatenate, and cut into `block_size` blocks.

    As in `run_clm.py`, documents are concatenated 1,000 at a time and each group's remainder shorter than one
    block is dropped. Tokenizing runs on `num_proc` workers; the packing itself runs in one process, so the
    groups (and the blocks) are the same whatever the worker count: `datasets.map` with `num_proc` would split
    the documents into shards and drop a remainder at every shard's end. `labels` equal `input_ids`; the
    model shifts them.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def tokenize(batch):
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [doc + eos for doc in ids]}

    def group(batch):
        flat = list(chain.from_iterable(batch["input_ids"]))
        usable = len(flat) // block_size * block_size
        blocks = [flat[i:i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks],
                "labels": [list(b) for b in blocks]}

    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=raw["train"].column_names,
                        load_from_cache_file=not overwrite_cache, desc="tokenizing")
    # `datasets` takes a map's shard count from the cache files already there under its fingerprint (which leaves
    # num_proc out), even with load_from_cache_file=False: shard files of the default name, as the per-shard
    # packing of earlier versions left them, would be used again. No sharded map writes this suffix.
    return datasets.DatasetDict({
        split: ds.map(group, batched=True, batch_size=PACKING_GROUP, num_proc=None, suffix_template=ONE_PROCESS_SUFFIX,
                      load_from_cache_file=not overwrite_cache, desc=f"packing into blocks of {block_size}")
        for split, ds in tokenized.items()})


def _no_barrier(desc: str = ""):
    return contextlib.nullcontext()


def build_lm_datasets(args: DataArguments, tokenizer, seed: int = 42,
                      main_process_first=_no_barrier) -> datasets.DatasetDict:
    """Packed train/validation blocks. Pass `training_args.main_process_first` under distributed runs
    so rank 0 fills the `datasets` cache and the other ranks read it."""
    block_size = args.block_size or min(tokenizer.model_max_length, 1024)
    with main_process_first(desc="loading and tokenizing data"):
        raw = load_raw_datasets(args, seed=seed)
        packed = pack_into_blocks(raw, tokenizer, block_size, args.text_column,
                                  args.preprocessing_num_workers, args.overwrite_cache)
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            packed[split] = packed[split].select(range(min(limit, len(packed[split]))))
    if len(packed["train"]) == 0:
        raise SystemExit(f"error: the training data gives no block of {block_size} tokens; "
                         "lower block_size or add text")
    return packed
