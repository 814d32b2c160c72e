"""Which WinoBias pairs are true minimal pairs: the two sentences differ only in their gendered words.

The official files pair line i of `pro_stereotyped_*` with line i of `anti_stereotyped_*`. In a few pairs the
two sentences differ by more than the gendered words (a typo on one side, a word added or dropped, two
unrelated sentences). Whole-sentence likelihood then measures the typo or the length, not gender, so the
default WinoBias metrics use minimal pairs only (the paper's all-pairs numbers stay available as
`anti_count_all` / `anti_rate_all`).

A pair is minimal when a word-level diff of the two bracket-stripped sentences (words and punctuation marks,
lower-cased) finds only substitutions of one gendered word by a gendered word of the other gender, in equal
numbers on both sides. The gendered words are listed here and nowhere else (`MALE_WORDS`, `FEMALE_WORDS`).

    python -m compress.bias.winobias_pairs DIR     # the Markdown table of the excluded pairs of DIR's files
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from compress.bias import data as bias_data

# The gendered words a WinoBias pair may swap (lower case; "mr." is the word "mr" followed by ".").
MALE_WORDS = frozenset({"he", "him", "his", "himself", "man", "men", "mr", "boy", "boys", "male", "gentleman",
                        "gentlemen", "sir", "father", "son", "husband", "brother", "king"})
FEMALE_WORDS = frozenset({"she", "her", "hers", "herself", "woman", "women", "mrs", "ms", "miss", "girl", "girls",
                          "female", "lady", "ladies", "madam", "mother", "daughter", "wife", "sister", "queen"})
GENDERED_WORDS = MALE_WORDS | FEMALE_WORDS

_WORD = re.compile(r"\w+|[^\w\s]")


def words(sentence: str) -> list[str]:
    """The sentence's words and punctuation marks, lower-cased, brackets dropped."""
    return _WORD.findall(sentence.replace("[", " ").replace("]", " ").lower())


def _gender(word: str) -> str | None:
    return "male" if word in MALE_WORDS else "female" if word in FEMALE_WORDS else None


def pair_difference(pro: str, anti: str) -> str | None:
    """None when the two sentences differ only in swapped gendered words, else why not (one line)."""
    a, b = words(pro), words(anti)
    problems = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        left, right = a[i1:i2], b[j1:j2]
        swaps = op == "replace" and len(left) == len(right) and all(
            _gender(x) is not None and _gender(y) is not None and _gender(x) != _gender(y)
            for x, y in zip(left, right, strict=True))
        if not swaps:
            problems.append(f"pro {' '.join(left)!r} vs anti {' '.join(right)!r}")
    return "; ".join(problems) if problems else None


@dataclass(frozen=True)
class ExcludedPair:
    subset: str  # type1_dev, ...
    index: int  # the pair's line number in both files (1-based)
    pro: str
    anti: str
    reason: str


def excluded_pairs(pairs: Iterable[bias_data.WinoBiasPair], subset: str) -> list[ExcludedPair]:
    return [ExcludedPair(subset, pair.index, pair.pro, pair.anti, reason) for pair in pairs
            if (reason := pair_difference(pair.pro, pair.anti)) is not None]


def all_excluded_pairs(directory: str | Path) -> list[ExcludedPair]:
    """The excluded pairs of the eight official files in `directory`, subset by subset."""
    found = []
    for kind in bias_data.WINOBIAS_TYPES:
        for split in bias_data.WINOBIAS_SPLITS:
            found += excluded_pairs(bias_data.load_winobias(kind, split, directory), f"{kind}_{split}")
    return found


def markdown_table(excluded: list[ExcludedPair]) -> str:
    """The README's table: file pair, line, both sentences, why the pair is not minimal."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| files | line | pro_stereotyped | anti_stereotyped | differs by |", "|---|---|---|---|---|"]
    for pair in excluded:
        kind, _, split = pair.subset.partition("_")
        lines.append(f"| `{{pro,anti}}_stereotyped_{kind}.txt.{split}` | {pair.index} | {cell(pair.pro)} | "
                     f"{cell(pair.anti)} | {cell(pair.reason)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m compress.bias.winobias_pairs DIR  (DIR holds the eight official WinoBias files)",
              file=sys.stderr)
        return 2
    try:
        excluded = all_excluded_pairs(args[0])
    except bias_data.BiasDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown_table(excluded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
