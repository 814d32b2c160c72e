"""Keeping the bias data a compression method chooses with apart from the bias data its model is evaluated on.

A method that optimises a bias measure (bias-targeted head pruning) must not choose on what the report later
measures, or the report would show its own choice back. The lm-eval tasks (`lm_eval_tasks/bias/`, documents from
`compress.bias.task`) read:

    WinoBias   compfair_winobias_<type>_<split>: the official pairs of one file pair (`bias.data.load_winobias`)
    StereoSet  compfair_stereoset_{intra,inter}sentence: every example of the split, every target term

so the rule is: choose WinoBias heads on dev and evaluate on test; choose StereoSet heads on a held-out share of
the target terms (`target_split`) and read the StereoSet numbers of the other terms only.

Overlap is defined at two levels, both after normalisation (`normalize`: brackets dropped, lower case, runs of
whitespace collapsed, outer whitespace stripped):

    sentence   a sentence of a choosing item equals a sentence of an evaluation item
    target     (StereoSet) a choosing example's target term equals an evaluation example's target term

The official WinoBias dev and test files share a handful of sentences (6 on the official files), so dev and
test are disjoint as splits but not sentence by sentence; `shared_sentences` finds such sentences and the caller
leaves the pairs carrying them out of the choosing set, or refuses.

`leaky_tasks` reads what a trainer record says it chose on and names the evaluated tasks that overlap it: the
report marks those models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

WINOBIAS_TASK = re.compile(r"^compfair_winobias_(type[12])_(dev|test)$")
STEREOSET_TASK_PREFIX = "compfair_stereoset"


def normalize(text: str) -> str:
    """The form two sentences (or target terms) are compared in."""
    return " ".join(text.replace("[", " ").replace("]", " ").lower().split())


def shared_sentences(choosing: Iterable[str], evaluation: Iterable[str]) -> set[str]:
    """Normalised sentences found in both collections."""
    return {normalize(s) for s in choosing} & {normalize(s) for s in evaluation}


def target_split(targets: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(choosing terms, held-out terms): the distinct normalised terms, shuffled with `seed`, the first
    round(fraction x terms) to choose on (at least one, and at least one left out). Sorted lists."""
    terms = sorted({normalize(t) for t in targets})
    if len(terms) < 2:
        raise ValueError(f"a target-term split needs at least 2 distinct terms, got {len(terms)}")
    random.Random(seed).shuffle(terms)
    cut = min(max(round(fraction * len(terms)), 1), len(terms) - 1)
    return sorted(terms[:cut]), sorted(terms[cut:])


def leaky_tasks(bias_record: dict | None, task_names: Iterable[str]) -> dict[str, str]:
    """Evaluated tasks that overlap the data a record's choice was made on: {task: why}, empty when none.

    `bias_record` is pruning.json's `bias_data` (`sources`, each with `dataset`, and `subsets` for WinoBias or
    `choosing_targets` for StereoSet).
    """
    leaks: dict[str, str] = {}
    if not bias_record:
        return leaks
    for source in bias_record.get("sources") or []:
        if source.get("dataset") == "winobias":
            chosen = set(source.get("subsets") or [])
            for task in task_names:
                match = WINOBIAS_TASK.match(task)
                if match and f"{match.group(1)}_{match.group(2)}" in chosen:
                    leaks[task] = f"heads were chosen on WinoBias {match.group(1)}_{match.group(2)}"
        elif source.get("dataset") == "stereoset":
            terms = source.get("choosing_targets") or []
            for task in task_names:
                if task.startswith(STEREOSET_TASK_PREFIX):
                    leaks[task] = (f"heads were chosen on the StereoSet examples of {len(terms)} target terms "
                                   "(pruning.json bias_data choosing_targets), which this task also scores")
    return leaks
