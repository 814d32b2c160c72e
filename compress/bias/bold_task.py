"""What the BOLD task YAMLs (`lm_eval_tasks/bold/`) call: the documents, the scoring filter, per-prompt results
and the task class that registers each group's metrics (`compress/bias/bold.py` defines them).

Run settings reach the filter on the documents (lm-eval gives `--metadata` to the dataset loader only):
`scorer` (toxicity: --metadata scorer, $COMPFAIR_SCORER, detoxify:original), `regard_scorer` (--metadata
regard_scorer, $COMPFAIR_REGARD_SCORER, hf:sasha/regardv3) and `groups` (the domain's groups, so every prompt
reports a value, possibly [0, 0], for every group's metric).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from lm_eval.api.filter import Filter

from compress.bias import bold
from compress.toxicity.scorers import load_scorer, resolve_spec, split_specs
from compress.toxicity.task import GenerationTask

log = logging.getLogger(__name__)
SCORED_TEXTS = ("continuation", "prompt_and_continuation")


def bold_docs(domain: str, **metadata):
    import datasets

    docs = bold.load_bold(domain, metadata)
    groups = list(dict.fromkeys(d["group"] for d in docs))
    settings = {"scorer": metadata.get("scorer") or resolve_spec(), "regard_scorer": bold.resolve_regard_spec(metadata),
                "groups": groups}
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{**d, **settings} for d in docs])})


class ScoreBoldGenerations(Filter):
    """Scores every generation of a task in one batched pass per scorer: regard label, toxicity, VADER sentiment.

    Per prompt it returns a JSON string (lm-eval logs filtered responses with `str()`) with one entry per
    generation under `regard`, `toxicity`, `sentiment`, `length_chars`, and the two scorer specs.
    """

    def __init__(self, text: str = "prompt_and_continuation", batch_size: int | None = None) -> None:
        if text not in SCORED_TEXTS:
            raise ValueError(f"ScoreBoldGenerations text={text!r}: expected one of {SCORED_TEXTS}")
        self.text = text
        self.batch_size = int(batch_size) if batch_size else None

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[str]:
        resps = [list(r) for r in resps]  # BoldTask (a GenerationTask) has already dropped data-parallel padding
        if not resps:
            return []
        generations = [g for r in resps for g in r]
        prompts_of = [doc["prompt"] for doc, r in zip(docs, resps, strict=True) for _ in r]
        texts = generations if self.text == "continuation" else [p + g for p, g in zip(prompts_of, generations)]
        # BOLD's toxicity is the primary scorer's where the run names several
        toxicity_spec, regard_spec = split_specs(docs[0]["scorer"])[0], docs[0]["regard_scorer"]
        log.info("scoring %d BOLD generations (%s) with %s, %s and VADER", len(texts), self.text, regard_spec,
                 toxicity_spec)
        regard = bold.load_regard_scorer(regard_spec).labels_of(texts)
        toxicity = load_scorer(toxicity_spec, batch_size=self.batch_size).score(texts, progress=True)
        sentiments = bold.sentiment(texts)
        out, start = [], 0
        for r in resps:
            end = start + len(r)
            out.append(json.dumps({"regard": regard[start:end], "toxicity": toxicity[start:end],
                                   "sentiment": sentiments[start:end], "length_chars": [len(g) for g in r],
                                   "scorer": toxicity_spec, "regard_scorer": regard_spec}))
            start = end
        return out


def process_results(doc: dict, results: list[str]) -> dict:
    scored = json.loads(results[0])
    return bold.per_prompt(doc["group"], scored["regard"], scored["toxicity"], scored["sentiment"],
                           scored["length_chars"], doc["groups"])


class BoldTask(GenerationTask):
    """A BOLD domain's task: every prompt scored exactly `repeats` times (GenerationTask); the YAML lists the
    domain-wide metrics; each group's `<score>_<group>` metric and its stderr are registered here, once the
    documents say which groups the domain has."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        groups = list(dict.fromkeys(self.dataset[self.config.test_split]["group"]))
        for score in bold.SCORES:
            for group in groups:
                name = f"{score}_{group}"
                self._aggregation_list[name] = bold.weighted_mean
                self._aggregation_list[f"{name}_stderr"] = bold.weighted_mean_stderr
                self._higher_is_better[name] = score == "regard" or score == "sentiment"
                self._higher_is_better[f"{name}_stderr"] = False
