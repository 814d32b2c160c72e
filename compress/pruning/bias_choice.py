"""The bias data bias-targeted head pruning chooses heads on, kept apart from the data the model is evaluated on.

Each `bias_data` entry is a WinoBias folder (the eight official files) or a StereoSet file (any layout
`compress.bias.data` reads); `bias_eval_data` may name, by the same kinds, what the model will be evaluated on
(default: the same folder or file). The rule (`compress.bias.overlap`):

    WinoBias   choose on the `bias_split` (dev) pairs of both types, minimal pairs only (as the default WinoBias
               metrics count them); the evaluation data is the other split (test). Choosing on test is refused.
    StereoSet  choose on the intrasentence examples of a seeded share (`bias_target_fraction`) of the target
               terms; the evaluation data is every example of the other terms (of `bias_eval_data` when given:
               all of its examples). A choosing term that is also an evaluation term is refused.

A choosing pair holding a sentence that is also an evaluation sentence (the official WinoBias dev and test files
share 6) is left out and listed in the record (`bias_overlap: leave_out`, the default) or refused
(`bias_overlap: refuse`); a choice left with no pair is refused. Refusals are one-line `SystemExit`s.

`choose_bias_pairs` returns the pairs of each source and the description that pruning.json keeps as `bias_data`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from compress.bias import data as bias_data
from compress.bias import overlap, winobias_pairs

STEREOSET_CHOOSING_SPLIT = "intrasentence"


@dataclass
class BiasPairs:
    """One source's pairs: the favoured (pro-stereotyped / stereotype) sentence beside the disfavoured one.

    `score` says how a sentence is scored: "total" log-likelihood (WinoBias, as its task does) or the per-token
    "mean" (StereoSet, whose scores are per-token geometric means)."""

    dataset: str
    score: str
    favoured: list[str]
    disfavoured: list[str]
    targets: list[str]  # StereoSet: each pair's target term; WinoBias: its subset
    domains: list[str]
    description: dict = field(default_factory=dict)


def _refuse(message: str):
    raise SystemExit(f"error: {message}")


def _kind(path: str) -> str:
    p = Path(path).expanduser()
    if p.is_dir():
        return "winobias"
    if p.is_file():
        return "stereoset"
    _refuse(f"bias_data {path}: no such file or folder (expected a WinoBias folder or a StereoSet file)")


def _load(loader, *args):
    try:
        return loader(*args)
    except bias_data.BiasDataError as err:
        raise SystemExit(f"error: {err}") from None


def _leave_out_shared(rows: list, sentences_of, evaluation: set[str], policy: str, where: str) -> tuple[list, list]:
    """(kept rows, left-out rows) after removing rows with a sentence in `evaluation` (normalised sentences)."""
    kept, left_out = [], []
    for row in rows:
        shared = {overlap.normalize(s) for s in sentences_of(row)} & evaluation
        (left_out if shared else kept).append(row)
    if left_out and policy == "refuse":
        example = next(iter({overlap.normalize(s) for s in sentences_of(left_out[0])} & evaluation))
        _refuse(f"{where}: {len(left_out)} choosing pairs share a sentence with the evaluation data (e.g. "
                f"{example!r}); set bias_overlap: leave_out to choose without them")
    if not kept:
        _refuse(f"{where}: every choosing pair shares a sentence with the evaluation data; choose on other data")
    return kept, left_out


def _sample(rows: list, max_pairs: int | None, seed: int) -> list:
    if max_pairs is None or len(rows) <= max_pairs:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), max_pairs))
    return [rows[i] for i in picked]


def winobias_pairs_for_choosing(folder: str, eval_folder: str, split: str, policy: str, max_pairs: int | None,
                                seed: int) -> BiasPairs:
    if split not in bias_data.WINOBIAS_SPLITS:
        _refuse(f"bias_split {split!r}: expected one of {bias_data.WINOBIAS_SPLITS}")
    if split == "test":
        _refuse("bias_split test: WinoBias is evaluated on test (compfair_winobias_*_test); choose heads on dev")
    eval_splits = [s for s in bias_data.WINOBIAS_SPLITS if s != split]
    evaluation = {overlap.normalize(s) for kind in bias_data.WINOBIAS_TYPES for s_ in eval_splits
                  for p in _load(bias_data.load_winobias, kind, s_, eval_folder) for s in (p.pro, p.anti)}
    rows, in_files = [], 0
    for kind in bias_data.WINOBIAS_TYPES:
        pairs = _load(bias_data.load_winobias, kind, split, folder)
        in_files += len(pairs)
        rows += [(f"{kind}_{split}", p) for p in pairs if winobias_pairs.pair_difference(p.pro, p.anti) is None]
    kept, left_out = _leave_out_shared(rows, lambda r: (r[1].pro, r[1].anti), evaluation, policy,
                                       f"WinoBias {folder} ({split} vs {eval_folder} {'/'.join(eval_splits)})")
    kept = _sample(kept, max_pairs, seed)
    files = [str(Path(folder) / f"{side}_stereotyped_{kind}.txt.{split}")
             for kind in bias_data.WINOBIAS_TYPES for side in ("pro", "anti")]
    description = {
        "dataset": "winobias", "folder": str(folder), "files": files, "split": split,
        "subsets": [f"{kind}_{split}" for kind in bias_data.WINOBIAS_TYPES],
        "pairs_in_files": in_files, "minimal_pairs": len(rows), "pairs": len(kept), "max_pairs": max_pairs,
        "left_out_sharing_a_sentence": [{"subset": s, "index": p.index} for s, p in left_out],
        "evaluation": {"folder": str(eval_folder), "subsets": [f"{k}_{s}" for k in bias_data.WINOBIAS_TYPES
                                                               for s in eval_splits],
                       "sentences": len(evaluation)},
        "measure": "mean over pairs of log p(pro) - log p(anti), whole sentences after the prefix token (nats)",
    }
    return BiasPairs("winobias", "total", [p.pro for _, p in kept], [p.anti for _, p in kept],
                     [s for s, _ in kept], ["gender"] * len(kept), description)


def _stereoset_examples(path: str) -> list:
    return [e for split in bias_data.STEREOSET_SPLITS for e in _load(bias_data.load_stereoset, split, path)]


def stereoset_pairs_for_choosing(path: str, eval_path: str, fraction: float, policy: str, max_pairs: int | None,
                                 seed: int) -> BiasPairs:
    examples = _load(bias_data.load_stereoset, STEREOSET_CHOOSING_SPLIT, path)
    choosing_terms, held_out = overlap.target_split((e.target for e in examples), fraction, seed)
    choosing = set(choosing_terms)
    same_file = Path(eval_path).expanduser().resolve() == Path(path).expanduser().resolve()
    evaluated = [e for e in _stereoset_examples(eval_path)
                 if not same_file or overlap.normalize(e.target) not in choosing]
    shared_terms = sorted(choosing & {overlap.normalize(e.target) for e in evaluated})
    if shared_terms:
        _refuse(f"StereoSet {path} vs {eval_path}: {len(shared_terms)} choosing target terms are also evaluated "
                f"(e.g. {shared_terms[0]!r}); evaluate on held-out terms only")
    evaluation = {overlap.normalize(s) for e in evaluated for s in e.sentences.values()}
    rows = [e for e in examples if overlap.normalize(e.target) in choosing]
    kept, left_out = _leave_out_shared(rows, lambda e: e.sentences.values(), evaluation, policy,
                                       f"StereoSet {path} (choosing terms vs {eval_path})")
    kept = _sample(kept, max_pairs, seed)
    description = {
        "dataset": "stereoset", "file": str(path), "split": STEREOSET_CHOOSING_SPLIT,
        "target_fraction": fraction, "seed": seed, "choosing_targets": choosing_terms,
        "held_out_targets": held_out if same_file else None, "examples_of_choosing_targets": len(rows),
        "pairs": len(kept), "max_pairs": max_pairs,
        "left_out_sharing_a_sentence": [e.id for e in left_out],
        "evaluation": {"file": str(eval_path), "examples": len(evaluated),
                       "targets": len({overlap.normalize(e.target) for e in evaluated})},
        "measure": "mean over examples of the per-token mean log p(stereotype) - log p(anti-stereotype), whole "
                   "sentences after the prefix token (nats)",
    }
    return BiasPairs("stereoset", "mean", [e.sentences["stereotype"] for e in kept],
                     [e.sentences["anti-stereotype"] for e in kept], [e.target for e in kept],
                     [e.bias_type for e in kept], description)


def choose_bias_pairs(config) -> list[BiasPairs]:
    """The pairs of every `config.bias_data` source, each checked against its evaluation data."""
    evaluation = {}
    for path in config.bias_eval_data or []:
        kind = _kind(path)
        if kind in evaluation:
            _refuse(f"bias_eval_data names two {kind} sources ({evaluation[kind]}, {path}); give one of each kind")
        evaluation[kind] = path
    sources = []
    for path in config.bias_data or []:
        kind = _kind(path)
        eval_path = evaluation.get(kind, path)
        if kind == "winobias":
            sources.append(winobias_pairs_for_choosing(path, eval_path, config.bias_split, config.bias_overlap,
                                                       config.bias_max_pairs, config.seed))
        else:
            sources.append(stereoset_pairs_for_choosing(path, eval_path, config.bias_target_fraction,
                                                        config.bias_overlap, config.bias_max_pairs, config.seed))
    return sources
