"""Prompt sets for the toxicity tasks: curated once from RealToxicityPrompts and TCCC, read back by the tasks.

    compfair-prompts rtp  --source HUB_NAME_OR_FILE --out DIR [--n 1200 --seed 42]
    compfair-prompts tccc --source train.csv        --out DIR [--n 4000 --seed 42]

RTP (Gehman et al. 2020): `n` prompts sampled from the `challenging` ones, from the hub dataset or a
local `prompts.jsonl` in its original schema. TCCC (Jigsaw Toxic Comment Classification Challenge,
`train.csv`): a prompt is the first half of a comment's tokens; `tox4k` samples comments labelled
`toxic == 1`, `random4k` samples all comments, `safe4k` samples comments the scorer gives toxicity
below `--safe-threshold`. Each set is a seeded walk through a shuffled copy of the source that keeps
the first `n` comments passing the set's test, so it is a uniform sample of those comments and the
scorer only runs on as many comments as `safe4k` needs.

Output: `DIR/{rtp,tox4k,random4k,safe4k}.jsonl` (one prompt per line: `id`, `prompt`, and where it came
from) and `DIR/manifest.json` (per source: file hash, seed, sizes, thresholds, scorer, tokenizer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from compress.common.atomic_files import write_atomically, write_json_atomically

RTP_HUB = "allenai/real-toxicity-prompts"
TCCC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
DEFAULT_SEED = 42
DEFAULT_TOKENIZER = "gpt2"
RTP_N = 1200
TCCC_N = 4000
SAFE_THRESHOLD = 0.001
TCCC_SETS = ("tox4k", "random4k", "safe4k")
SOURCE_OF_SET = {"rtp": "rtp", "tox4k": "tccc", "random4k": "tccc", "safe4k": "tccc"}
MANIFEST = "manifest.json"

RTP_FORMAT = ("RealToxicityPrompts prompts.jsonl: one JSON record per line with `challenging` and "
              "`prompt: {text, toxicity, ...}`")
TCCC_FORMAT = f"the Jigsaw TCCC train.csv with columns comment_text, {', '.join(TCCC_LABELS)}"


class PromptSourceError(ValueError):
    """A missing or malformed prompt source; the message is one line naming the file and what was expected."""


# ---------------------------------------------------------------------------------------------- sampling

def seeded_walk(count: int, seed: int, name: str) -> list[int]:
    """A permutation of range(count) fixed by (seed, set name), so each set draws its own stream."""
    order = list(range(count))
    random.Random(f"{seed}:{name}").shuffle(order)
    return order


def take_passing(order: Sequence[int], n: int, passes: Callable[[list[int]], list[bool]], chunk: int = 512,
                 desc: str | None = None) -> list[int]:
    """The first `n` indices of `order` that pass; `passes` judges a chunk at once (so a scorer can batch)."""
    chosen: list[int] = []
    with tqdm(total=n, desc=desc, disable=desc is None, unit="prompt") as bar:
        for start in range(0, len(order), chunk):
            block = list(order[start:start + chunk])
            kept = [i for i, ok in zip(block, passes(block), strict=True) if ok][:n - len(chosen)]
            chosen += kept
            bar.update(len(kept))
            if len(chosen) == n:
                break
    return chosen


def check_size(name: str, chosen: list[int], n: int, available: str, allow_fewer: bool) -> None:
    if not chosen:
        raise PromptSourceError(f"{name}: {available} has no eligible prompt; check the source and thresholds")
    if len(chosen) < n and not allow_fewer:
        raise PromptSourceError(f"{name}: asked for {n} prompts but {available} has only {len(chosen)}; "
                                "lower --n, or pass --allow-fewer to keep them all")


# ---------------------------------------------------------------------------------------------- RTP

def read_rtp(source: str) -> tuple[list[dict], dict]:
    """RTP records in the original schema, from a local JSONL file or a hub dataset, and their provenance."""
    path = Path(source).expanduser()
    if path.is_file():
        records = _read_jsonl(path, RTP_FORMAT)
        for line_no, record in enumerate(records, 1):
            prompt = record.get("prompt")
            if not isinstance(prompt, dict) or not isinstance(prompt.get("text"), str) or "challenging" not in record:
                raise PromptSourceError(f"{path}:{line_no}: expected {RTP_FORMAT}")
        return records, {"source": str(path.resolve()), "source_sha256": file_sha256(path)}
    if path.exists() or path.suffix in (".jsonl", ".json") or source.startswith(("/", ".", "~")):
        raise PromptSourceError(f"RTP source {source} is not a file: expected {RTP_FORMAT}, "
                                f"or a hub dataset name such as {RTP_HUB}")
    try:
        import datasets

        table = datasets.load_dataset(source, split="train").select_columns(
            ["filename", "begin", "end", "challenging", "prompt"])
    except Exception as err:  # offline, unknown name, or another schema: all end the same way
        raise PromptSourceError(f"could not read RTP from the hub dataset {source!r} ({type(err).__name__}); "
                                f"offline, download prompts.jsonl and pass --source /path/to/prompts.jsonl "
                                f"({RTP_FORMAT})") from err
    return table.to_list(), {"source": source, "source_fingerprint": table._fingerprint}


def select_rtp(records: Sequence[dict], n: int = RTP_N, seed: int = DEFAULT_SEED,
               max_prompt_toxicity: float | None = None, allow_fewer: bool = False) -> list[dict]:
    """`n` challenging prompts (optionally only those whose Perspective toxicity is below a bound), seeded."""

    def eligible(i: int) -> bool:
        record = records[i]
        if not record.get("challenging"):
            return False
        toxicity = record["prompt"].get("toxicity")
        return max_prompt_toxicity is None or (toxicity is not None and toxicity < max_prompt_toxicity)

    chosen = take_passing(seeded_walk(len(records), seed, "rtp"), n, lambda block: [eligible(i) for i in block])
    check_size("rtp", chosen, n, "the source's challenging prompts", allow_fewer)
    return [{
        "id": f"{records[i].get('filename', i)}:{records[i].get('begin', '')}",
        "prompt": records[i]["prompt"]["text"],
        "prompt_toxicity": records[i]["prompt"].get("toxicity"),
        "challenging": bool(records[i]["challenging"]),
        "source_index": i,
    } for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------- TCCC

def read_tccc(source: str):
    """The TCCC comments as a DataFrame (labels as ints), after checking the columns."""
    import pandas as pd

    path = Path(source).expanduser()
    if not path.is_file():
        raise PromptSourceError(f"TCCC source {source} is not a file: expected {TCCC_FORMAT} (download it from "
                                "Kaggle's jigsaw-toxic-comment-classification-challenge and pass --source PATH)")
    try:
        frame = pd.read_csv(path, dtype={"id": str, "comment_text": str}, keep_default_na=False)
    except Exception as err:
        raise PromptSourceError(f"{path}: not a readable CSV ({type(err).__name__}); expected {TCCC_FORMAT}") from err
    missing = [c for c in ("comment_text", *TCCC_LABELS) if c not in frame.columns]
    if missing:
        raise PromptSourceError(f"{path}: missing columns {missing}; expected {TCCC_FORMAT}")
    for label in TCCC_LABELS:
        values = pd.to_numeric(frame[label], errors="coerce")
        if values.isna().any() or not values.isin([0, 1]).all():
            raise PromptSourceError(f"{path}: column {label!r} must hold 0 or 1 in every row; expected {TCCC_FORMAT}")
        frame[label] = values.astype(int)
    if "id" not in frame.columns:
        frame["id"] = [str(i) for i in range(len(frame))]
    return frame


def halve(text: str, tokenizer) -> tuple[str, int, int]:
    """The first half of a text's tokens, decoded: (prompt, prompt tokens, text tokens)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    half = len(ids) // 2
    return tokenizer.decode(ids[:half], clean_up_tokenization_spaces=False), half, len(ids)


def select_tccc(frame, tokenizer, n: int = TCCC_N, seed: int = DEFAULT_SEED, sets: Sequence[str] = TCCC_SETS,
                scorer=None, safe_threshold: float = SAFE_THRESHOLD, allow_fewer: bool = False) -> dict[str, list]:
    """The TCCC prompt sets: {set name: records}. `scorer` (a `scorers.ToxicityScorer`) is needed for safe4k."""
    texts = frame["comment_text"].tolist()
    toxic = frame["toxic"].tolist()
    halves: dict[int, tuple[str, int, int]] = {}
    comment_toxicity: dict[int, float] = {}

    def halvable(block: list[int]) -> list[bool]:
        for i in block:
            if i not in halves:
                halves[i] = halve(texts[i], tokenizer)
        return [halves[i][1] > 0 for i in block]  # a one-token comment has no first half

    def safe(block: list[int]) -> list[bool]:
        ok = halvable(block)
        todo = [i for i, h in zip(block, ok, strict=True) if h and i not in comment_toxicity]
        comment_toxicity.update(zip(todo, scorer.score([texts[i] for i in todo]), strict=True))
        return [h and comment_toxicity[i] < safe_threshold for i, h in zip(block, ok, strict=True)]

    tests = {
        "tox4k": (lambda block: [t and toxic[i] == 1 for i, t in zip(block, halvable(block), strict=True)],
                  "comments labelled toxic"),
        "random4k": (halvable, "comments"),
        "safe4k": (safe, f"comments with scorer toxicity < {safe_threshold}"),
    }
    result = {}
    for name in sets:
        if name == "safe4k" and scorer is None:
            raise ValueError("safe4k needs a scorer")
        passes, what = tests[name]
        chosen = take_passing(seeded_walk(len(texts), seed, name), n, passes,
                              chunk=256 if name == "safe4k" else 512, desc=f"{name}: {what}")
        check_size(name, chosen, n, f"the source's {what}", allow_fewer)
        result[name] = [{
            "id": str(frame["id"].iat[i]),
            "prompt": halves[i][0],
            "prompt_tokens": halves[i][1],
            "comment_tokens": halves[i][2],
            "comment_toxic": int(toxic[i]),
            "comment_toxicity": comment_toxicity.get(i),
            "source_index": i,
        } for i in sorted(chosen)]
    return result


# ---------------------------------------------------------------------------------------------- files

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_jsonl(path: Path, expected: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptSourceError(f"{path}:{line_no}: not JSON ({err.msg}); expected {expected}") from None
            if not isinstance(record, dict):
                raise PromptSourceError(f"{path}:{line_no}: not a JSON object; expected {expected}")
            records.append(record)
    if not records:
        raise PromptSourceError(f"{path}: no records; expected {expected}")
    return records


def write_prompt_set(out_dir: Path, name: str, records: Sequence[dict]) -> Path:
    path = Path(out_dir) / f"{name}.jsonl"
    write_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def update_manifest(out_dir: Path, section: str, content: dict) -> Path:
    """Replace one source's section of DIR/manifest.json, keeping the other's."""
    path = Path(out_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest[section] = content
    write_json_atomically(path, manifest, sort_keys=True)
    return path


def read_prompt_set(name: str, data_dir: str | Path) -> tuple[list[dict], dict]:
    """A curated set and its manifest section, as the tasks read them."""
    if name not in SOURCE_OF_SET:
        raise PromptSourceError(f"unknown prompt set {name!r}; expected one of {sorted(SOURCE_OF_SET)}")
    data_dir = Path(data_dir).expanduser()
    path = data_dir / f"{name}.jsonl"
    command = f"compfair-prompts {SOURCE_OF_SET[name]} --source {'PROMPTS.jsonl' if name == 'rtp' else 'train.csv'}"
    if not path.is_file():
        raise PromptSourceError(f"{path} does not exist: run `{command} --out {data_dir}` first "
                                "(the data dir comes from COMPFAIR_DATA_DIR or --metadata '{\"data_dir\": ...}')")
    records = _read_jsonl(path, f"prompts written by `{command}`")
    for line_no, record in enumerate(records, 1):
        if not isinstance(record.get("prompt"), str) or "id" not in record:
            raise PromptSourceError(f"{path}:{line_no}: expected `id` and `prompt` fields (written by `{command}`)")
    manifest_path = data_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return records, manifest.get(SOURCE_OF_SET[name], {})


def load_tokenizer(name: str, how_to_fix: str = "--tokenizer /path/to/gpt2_tokenizer"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise PromptSourceError(f"could not load the tokenizer {name!r} ({type(err).__name__}); offline, pass "
                                f"a local tokenizer folder: {how_to_fix}") from err


def _tokenizer_record(name: str) -> str:
    # A local folder is recorded by absolute path, so the tasks find it from any working directory.
    return str(Path(name).resolve()) if Path(name).is_dir() else name


# ---------------------------------------------------------------------------------------------- CLI

def curate_rtp(args) -> dict:
    load_tokenizer(args.tokenizer)  # fail now, not in the middle of an evaluation that counts tokens with it
    records, provenance = read_rtp(args.source)
    chosen = select_rtp(records, args.n, args.seed, args.max_prompt_toxicity, args.allow_fewer)
    write_prompt_set(args.out, "rtp", chosen)
    manifest = {
        **provenance, "seed": args.seed, "n": args.n, "counts": {"rtp": len(chosen)},
        "available": {"records": len(records), "challenging": sum(bool(r.get("challenging")) for r in records)},
        "thresholds": {"challenging": True, "max_prompt_toxicity": args.max_prompt_toxicity},
        "tokenizer": _tokenizer_record(args.tokenizer), "created_utc": _now(),
    }
    update_manifest(args.out, "rtp", manifest)
    return manifest


def curate_tccc(args) -> dict:
    from compress.toxicity.scorers import ScorerError, load_scorer, resolve_spec

    tokenizer = load_tokenizer(args.tokenizer)
    frame = read_tccc(args.source)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := sorted(set(sets) - set(TCCC_SETS)):
        raise PromptSourceError(f"--sets: unknown set(s) {unknown}; expected some of {list(TCCC_SETS)}")
    spec = resolve_spec(args.scorer)
    try:
        scorer = load_scorer(spec, batch_size=args.batch_size) if "safe4k" in sets else None
    except ScorerError as err:
        raise PromptSourceError(f"--scorer: {err}") from err
    chosen = select_tccc(frame, tokenizer, args.n, args.seed, sets, scorer, args.safe_threshold, args.allow_fewer)
    for name, records in chosen.items():
        write_prompt_set(args.out, name, records)
    manifest = {
        "source": str(Path(args.source).resolve()), "source_sha256": file_sha256(args.source), "seed": args.seed,
        "n": args.n, "counts": {name: len(records) for name, records in chosen.items()},
        "available": {"comments": len(frame), "toxic": int(frame["toxic"].sum())},
        "thresholds": {"tox4k": "toxic == 1", "safe4k_below": args.safe_threshold},
        "scorer": spec if "safe4k" in sets else None, "tokenizer": _tokenizer_record(args.tokenizer),
        "created_utc": _now(),
    }
    update_manifest(args.out, "tccc", manifest)
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compfair-prompts", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="output folder (the tasks' data dir)")
    common.add_argument("--seed", type=int, default=DEFAULT_SEED)
    common.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="hub name or local folder; halves TCCC comments and counts generation tokens")
    common.add_argument("--allow-fewer", action="store_true",
                        help="keep every eligible prompt when the source has fewer than --n (default: an error)")

    rtp = commands.add_parser("rtp", parents=[common], help="sample challenging RealToxicityPrompts prompts")
    rtp.add_argument("--source", default=RTP_HUB, help=f"hub dataset name or local prompts.jsonl (default {RTP_HUB})")
    rtp.add_argument("--n", type=int, default=RTP_N)
    rtp.add_argument("--max-prompt-toxicity", type=float, default=None,
                     help="also require the prompt's Perspective toxicity below this (default: no bound)")

    tccc = commands.add_parser("tccc", parents=[common], help="cut TCCC comments in half: tox4k, random4k, safe4k")
    tccc.add_argument("--source", required=True, help="the Jigsaw TCCC train.csv")
    tccc.add_argument("--n", type=int, default=TCCC_N, help="prompts per set")
    tccc.add_argument("--sets", default=",".join(TCCC_SETS), help="comma-separated subset of the three sets")
    tccc.add_argument("--scorer", default=None,
                      help="scorer spec for safe4k (default $COMPFAIR_SCORER, else detoxify:original)")
    tccc.add_argument("--safe-threshold", type=float, default=SAFE_THRESHOLD,
                      help="safe4k keeps comments whose scorer toxicity is below this")
    tccc.add_argument("--batch-size", type=int, default=None, help="scorer batch size (default: 64 on GPU, 16 on CPU)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise SystemExit("compfair-prompts: --n must be at least 1")
    try:
        manifest = curate_rtp(args) if args.command == "rtp" else curate_tccc(args)
    except PromptSourceError as err:
        raise SystemExit(f"compfair-prompts: {err}") from None
    print(f"wrote {manifest['counts']} prompts to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
