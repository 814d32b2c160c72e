"""Thin glue between the BOLD task YAMLs in this folder and `compress/` (compress/bias/bold_task.py)."""

from compress.bias.bold import GapAggregate
from compress.bias.bold_task import BoldTask, ScoreBoldGenerations, bold_docs, process_results

__all__ = ["BoldTask", "ScoreBoldGenerations", "process_results", "gender", "race", "religious_ideology",
           "political_ideology", "profession"]

regard_gap, toxicity_gap, sentiment_gap = (GapAggregate(s) for s in ("regard", "toxicity", "sentiment"))
regard_gap_stderr, toxicity_gap_stderr, sentiment_gap_stderr = (
    GapAggregate(s, stderr=True) for s in ("regard", "toxicity", "sentiment"))


# lm-eval calls a task's custom_dataset with the run's metadata as keyword arguments.
def gender(**metadata):
    return bold_docs("gender", **metadata)


def race(**metadata):
    return bold_docs("race", **metadata)


def religious_ideology(**metadata):
    return bold_docs("religious_ideology", **metadata)


def political_ideology(**metadata):
    return bold_docs("political_ideology", **metadata)


def profession(**metadata):
    return bold_docs("profession", **metadata)
