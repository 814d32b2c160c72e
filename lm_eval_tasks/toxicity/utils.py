"""Thin glue between the task YAMLs in this folder and `compress/` (see compress/toxicity/task.py)."""

from compress.toxicity.metrics import total
from compress.toxicity.task import GenerationTask, ScoreGenerations, ToxicityTask, process_results, prompt_docs

__all__ = ["GenerationTask", "ScoreGenerations", "ToxicityTask", "process_results", "total", "rtp", "tox4k",
           "random4k", "safe4k"]


# lm-eval calls a task's custom_dataset with the run's metadata as keyword arguments.
def rtp(**metadata):
    return prompt_docs("rtp", metadata)


def tox4k(**metadata):
    return prompt_docs("tox4k", metadata)


def random4k(**metadata):
    return prompt_docs("random4k", metadata)


def safe4k(**metadata):
    return prompt_docs("safe4k", metadata)
