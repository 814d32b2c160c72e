"""StereoSet and WinoBias examples, read from the official files or from their Hugging Face Hub copies.

StereoSet (Nadeem et al. 2021) accepts three local layouts, recognised by content:

- the official `dev.json`: `{"version", "data": {"intrasentence": [...], "intersentence": [...]}}`;
- a JSON list of examples in that same per-example schema (e.g. one split, or a subset of one);
- a JSON-lines file with one simplified row per example (`type`, `target`, `bias_type`, `context`,
  `stereotype`, `anti-stereotype`, `unrelated`), as some redistributions ship the dev split.

Without a local file the hub dataset `McGill-NLP/stereoset` is read (configs `intrasentence` and
`intersentence`, split `validation`).

WinoBias (Zhao et al. 2018) reads the eight official files `{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`:
one numbered sentence per line, mentions in [brackets]. Line i of the pro file pairs with line i of the
anti file. Without a local folder the hub dataset `uclanlp/wino_bias` is read (configs `type1_pro`, ...,
splits `validation`/`test`), whose Treebank tokens are joined back into sentences.

Every malformed input ends in a one-line `BiasDataError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

STEREOSET_SPLITS = ("intrasentence", "intersentence")
STEREOSET_LABELS = ("stereotype", "anti-stereotype", "unrelated")
STEREOSET_HUB = "McGill-NLP/stereoset"
# Order of the hub's `gold_label` ClassLabel (its dataset card).
STEREOSET_HUB_LABELS = ("anti-stereotype", "stereotype", "unrelated")

WINOBIAS_TYPES = ("type1", "type2")
WINOBIAS_SPLITS = ("dev", "test")
WINOBIAS_HUB = "uclanlp/wino_bias"
WINOBIAS_HUB_SPLITS = {"dev": "validation", "test": "test"}


class BiasDataError(ValueError):
    """A bias data file or folder is missing or not in the expected format (one-line message)."""


@dataclass(frozen=True)
class StereoSetExample:
    id: str
    target: str
    bias_type: str
    context: str
    sentences: dict[str, str]  # gold label -> sentence, one per STEREOSET_LABELS


@dataclass(frozen=True)
class WinoBiasPair:
    index: int  # the line number in the official files (1-based)
    pro: str
    anti: str


def data_dir_from(metadata: dict | None = None) -> Path | None:
    """The local data folder: `--metadata data_dir`, else $COMPFAIR_DATA_DIR, else None (use the hub)."""
    value = (metadata or {}).get("data_dir") or os.environ.get("COMPFAIR_DATA_DIR")
    return Path(value).expanduser() if value else None


# ----------------------------------------------------------------------------------------- StereoSet


def load_stereoset(split: str, path: str | Path | None = None) -> list[StereoSetExample]:
    """The examples of one StereoSet split from a local file (any layout above), or from the hub."""
    if split not in STEREOSET_SPLITS:
        raise BiasDataError(f"StereoSet split {split!r}: expected one of {STEREOSET_SPLITS}")
    if path is None:
        return stereoset_from_hub(split)
    path = Path(path).expanduser()
    if not path.is_file():
        raise BiasDataError(f"{path}: no such file (expected the official StereoSet dev.json)")
    if path.suffix == ".jsonl":
        return _stereoset_from_jsonl(path, split)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BiasDataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise BiasDataError(f"{path}: not UTF-8 text (expected the official StereoSet dev.json)") from None
    if isinstance(content, dict):
        data = content.get("data")
        if not isinstance(data, dict) or not isinstance(data.get(split), list):
            raise BiasDataError(f"{path}: expected the official layout {{\"version\", \"data\": {{\"{split}\": "
                                f"[...]}}}}; top-level keys are {sorted(content)}")
        raw = data[split]
    elif isinstance(content, list):
        raw = content
    else:
        raise BiasDataError(f"{path}: expected a JSON object (official dev.json) or a list of examples, "
                            f"got {type(content).__name__}")
    return [_official_example(path, i, record) for i, record in enumerate(raw)]


def _official_example(path: Path, i: int, record) -> StereoSetExample:
    where = f"{path}: example {i}"
    if not isinstance(record, dict):
        raise BiasDataError(f"{where} is a {type(record).__name__}, expected an object")
    missing = [k for k in ("target", "bias_type", "context", "sentences") if k not in record]
    if missing:
        raise BiasDataError(f"{where} lacks {missing}; expected id, target, bias_type, context, sentences")
    sentences = record["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        raise BiasDataError(f"{where}: `sentences` must be a list of objects with `sentence` and `gold_label`")
    labels = [s.get("gold_label") for s in sentences]
    if sorted(map(str, labels)) != sorted(STEREOSET_LABELS) or not all(isinstance(s.get("sentence"), str)
                                                                     for s in sentences):
        raise BiasDataError(f"{where} has gold labels {labels}; expected one sentence (a string) each labelled "
                            f"{', '.join(STEREOSET_LABELS)}")
    return _example(record.get("id", f"{i}"), record, {s["gold_label"]: s["sentence"] for s in sentences})


def _stereoset_from_jsonl(path: Path, split: str) -> list[StereoSetExample]:
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise BiasDataError(f"{path}:{line_no}: not valid JSON") from None
            needed = ("type", "target", "bias_type", "context", *STEREOSET_LABELS)
            if not isinstance(row, dict) or any(k not in row for k in needed):
                raise BiasDataError(f"{path}:{line_no}: expected a simplified StereoSet row with keys {needed}")
            if row["type"] == split:
                examples.append(_example(f"{split}-{line_no}", row, {label: row[label] for label in STEREOSET_LABELS}))
    return examples


def _example(example_id, record: dict, by_label: dict[str, str]) -> StereoSetExample:
    return StereoSetExample(id=str(example_id), target=str(record["target"]).strip(),
                            bias_type=str(record["bias_type"]).strip(), context=str(record["context"]).strip(),
                            sentences={label: by_label[label].strip() for label in STEREOSET_LABELS})


def stereoset_from_hub(split: str) -> list[StereoSetExample]:
    import datasets

    rows = datasets.load_dataset(STEREOSET_HUB, split, split="validation")
    return [stereoset_from_hub_row(row) for row in rows]


def stereoset_from_hub_row(row: dict) -> StereoSetExample:
    """One hub row: `sentences` is a dict of parallel lists, `gold_label` ClassLabel ids (or names)."""
    sentences = row["sentences"]
    labels = [STEREOSET_HUB_LABELS[g] if isinstance(g, int) else g for g in sentences["gold_label"]]
    if sorted(labels) != sorted(STEREOSET_LABELS):
        raise BiasDataError(f"{STEREOSET_HUB} row {row.get('id')}: gold labels {labels}, expected "
                            f"one each of {STEREOSET_LABELS}")
    return _example(row["id"], row, dict(zip(labels, sentences["sentence"], strict=True)))


# ------------------------------------------------------------------------------------------ WinoBias

_NUMBERED_LINE = re.compile(r"^(\d+) (.+)$")


def load_winobias(kind: str, split: str, directory: str | Path | None = None) -> list[WinoBiasPair]:
    """The pro/anti sentence pairs of one WinoBias subset (`type1`/`type2` x `dev`/`test`)."""
    if kind not in WINOBIAS_TYPES or split not in WINOBIAS_SPLITS:
        raise BiasDataError(f"WinoBias subset {kind}/{split}: expected type in {WINOBIAS_TYPES} and split in "
                            f"{WINOBIAS_SPLITS}")
    if directory is None:
        return winobias_from_hub(kind, split)
    directory = Path(directory).expanduser()
    pro = _winobias_file(directory / f"pro_stereotyped_{kind}.txt.{split}")
    anti = _winobias_file(directory / f"anti_stereotyped_{kind}.txt.{split}")
    return _pair_up(pro, anti, f"{directory}/{{pro,anti}}_stereotyped_{kind}.txt.{split}")


def _winobias_file(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise BiasDataError(f"{path}: no such file (expected the official WinoBias files "
                            "{pro,anti}_stereotyped_type{1,2}.txt.{dev,test})")
    lines = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _NUMBERED_LINE.match(line.strip())
        if not match:
            raise BiasDataError(f"{path}:{line_no}: expected '<number> <sentence with [mentions]>', got {line!r}")
        lines.append((int(match.group(1)), " ".join(match.group(2).replace("[", "").replace("]", "").split())))
    return lines


def _pair_up(pro: list[tuple[int, str]], anti: list[tuple[int, str]], where: str) -> list[WinoBiasPair]:
    if len(pro) != len(anti):
        raise BiasDataError(f"{where}: {len(pro)} pro lines but {len(anti)} anti lines; they pair up by position")
    pairs = []
    for (pro_index, pro_text), (anti_index, anti_text) in zip(pro, anti, strict=True):
        if pro_index != anti_index:
            raise BiasDataError(f"{where}: pro line numbered {pro_index} sits beside anti line {anti_index}")
        pairs.append(WinoBiasPair(index=pro_index, pro=pro_text, anti=anti_text))
    return pairs


def winobias_from_hub(kind: str, split: str) -> list[WinoBiasPair]:
    import datasets

    hub_split = WINOBIAS_HUB_SPLITS[split]
    pro = datasets.load_dataset(WINOBIAS_HUB, f"{kind}_pro", split=hub_split)
    anti = datasets.load_dataset(WINOBIAS_HUB, f"{kind}_anti", split=hub_split)
    return _pair_up([(i, detokenize(r["tokens"])) for i, r in enumerate(pro, start=1)],
                    [(i, detokenize(r["tokens"])) for i, r in enumerate(anti, start=1)],
                    f"{WINOBIAS_HUB} {kind} {hub_split}")


_NO_SPACE_BEFORE = re.compile(r" (?=[.,!?;:%)\]}]|'s\b|'re\b|'ve\b|'ll\b|'d\b|'m\b|n't\b)")
_NO_SPACE_AFTER = re.compile(r"(?<=[(\[{$]) ")


def detokenize(tokens: list[str]) -> str:
    """Treebank tokens back to plain text: `['He', 'did', "n't", 'go', '.']` -> "He didn't go."."""
    text = " ".join(t for t in tokens if t)
    text = text.replace("-LRB-", "(").replace("-RRB-", ")").replace("``", '"').replace("''", '"')
    return _NO_SPACE_AFTER.sub("", _NO_SPACE_BEFORE.sub("", text))
