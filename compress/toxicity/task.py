"""What the lm-eval toxicity tasks (`lm_eval_tasks/toxicity/`) call: their documents, the scoring filter,
and the per-prompt results.

Run settings reach the tasks without editing YAML. lm-eval hands `--metadata` (and TaskManager
metadata) to the dataset loader, not to filters, so the loader resolves them once and stamps them
on every document, where the filter reads them and `--log_samples` records them:

    data_dir          --metadata data_dir, else $COMPFAIR_DATA_DIR; without one, RTP tasks curate
                      from the hub dataset with the default seed, and TCCC tasks stop with an error
    scorer            --metadata scorer, else $COMPFAIR_SCORER, else detoxify:original
    length_tokenizer  --metadata length_tokenizer, else $COMPFAIR_LENGTH_TOKENIZER, else the tokenizer
                      the prompts were curated with (manifest.json), else gpt2; one fixed ruler for
                      `gen_length_tokens`, whatever model generated the text

The filter receives every generation of a task at once (lm-eval applies filters per task) and
scores them all in one batched, length-sorted pass.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable

from lm_eval.api.filter import Filter
from lm_eval.api.task import ConfigurableTask

from compress.toxicity import metrics as toxicity_metrics
from compress.toxicity import prompts
from compress.toxicity.scorers import load_scorer, resolve_spec, spec_slug, split_specs

log = logging.getLogger(__name__)
SCORED_TEXTS = ("continuation", "prompt_and_continuation")


def prompt_docs(set_name: str, metadata: dict):
    """The task's documents as a DatasetDict with one `test` split, run settings stamped on each."""
    import datasets

    data_dir = metadata.get("data_dir") or os.environ.get("COMPFAIR_DATA_DIR")
    if data_dir:
        records, manifest = prompts.read_prompt_set(set_name, data_dir)
    elif set_name == "rtp":
        hub_records, _ = prompts.read_rtp(prompts.RTP_HUB)
        records, manifest = prompts.select_rtp(hub_records), {}
    else:
        raise prompts.PromptSourceError(
            f"compfair_{set_name} reads curated TCCC prompts: run `compfair-prompts tccc --source train.csv --out "
            "DIR` and set COMPFAIR_DATA_DIR=DIR (or --metadata '{\"data_dir\": \"DIR\"}')")
    settings = {
        "scorer": metadata.get("scorer") or resolve_spec(),
        "length_tokenizer": (metadata.get("length_tokenizer") or os.environ.get("COMPFAIR_LENGTH_TOKENIZER")
                             or manifest.get("tokenizer") or prompts.DEFAULT_TOKENIZER),
    }
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{**r, **settings} for r in records])})


@functools.lru_cache(maxsize=2)
def length_tokenizer(name: str):
    return prompts.load_tokenizer(name, "--metadata '{\"length_tokenizer\": PATH}' or COMPFAIR_LENGTH_TOKENIZER=PATH")


class ScoreGenerations(Filter):
    """Scores every generation of a task in one batched pass.

    Per prompt it returns a JSON object as a string: each generation's `toxicity`, `length_chars` and
    `length_tokens`, and the `scorer` spec. A string, because lm-eval writes each filtered response
    of `--log_samples` with `str()`: JSON keeps the file and the in-memory samples equally readable.
    """

    def __init__(self, text: str = "continuation", batch_size: int | None = None) -> None:
        if text not in SCORED_TEXTS:
            raise ValueError(f"ScoreGenerations text={text!r}: expected one of {SCORED_TEXTS}")
        self.text = text
        self.batch_size = int(batch_size) if batch_size else None  # None: the scorer's default for its device

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[str]:
        resps = trim_padding([list(r) for r in resps])
        if not resps:
            return []
        spec, tokenizer_name = docs[0]["scorer"], docs[0]["length_tokenizer"]
        generations = [g for r in resps for g in r]
        prompts_of = [doc["prompt"] for doc, r in zip(docs, resps, strict=True) for _ in r]
        # A causal LM's continuation starts where the prompt ends, so the two are joined as they are.
        texts = generations if self.text == "continuation" else [p + g for p, g in zip(prompts_of, generations)]
        specs = split_specs(spec)
        by_scorer = {}
        for one in specs:  # every generation by every scorer, one batched pass each
            log.info("scoring %d generations (%s) with %s", len(texts), self.text, one)
            by_scorer[one] = load_scorer(one, batch_size=self.batch_size).score(texts, progress=True)
        toxicity = by_scorer[specs[0]]
        tokens = length_tokenizer(tokenizer_name)(generations, add_special_tokens=False)["input_ids"]
        out, start = [], 0
        for r in resps:
            end = start + len(r)
            scored = {"toxicity": toxicity[start:end], "length_chars": [len(g) for g in r],
                      "length_tokens": [len(ids) for ids in tokens[start:end]], "scorer": spec}
            if len(specs) > 1:
                scored["toxicity_by_scorer"] = {one: values[start:end] for one, values in by_scorer.items()}
            out.append(json.dumps(scored))
            start = end
        return out


def trim_padding(resps: list[list[str]]) -> list[list[str]]:
    """Drop the extra generations lm-eval adds under data parallelism.

    A rank with fewer requests than the others pads by repeating its last request, and the padding's
    generations are appended to that request's responses; every other prompt has exactly `repeats`.
    """
    if not resps:
        return resps
    counts = Counter(len(r) for r in resps)
    k = min(counts, key=lambda n: (-counts[n], n))  # the commonest length; on a tie (two prompts) the shorter
    return [r[:k] for r in resps]


def process_results(doc: dict, results: list[str]) -> dict:
    """The primary scorer's metrics under their plain names; with several scorers, every scorer's metrics
    again as `<metric>@<scorer slug>` (e.g. `toxic_score@detoxify_unbiased`)."""
    scored = json.loads(results[0])
    out = toxicity_metrics.per_prompt(scored["toxicity"], scored["length_chars"], scored["length_tokens"])
    for spec, toxicity in (scored.get("toxicity_by_scorer") or {}).items():
        values = toxicity_metrics.per_prompt(toxicity, scored["length_chars"], scored["length_tokens"])
        out.update({f"{name}@{spec_slug(spec)}": values[name] for name in toxicity_metrics.SCORED})
    return out


class ToxicityTask(ConfigurableTask):
    """A toxicity task; with several scorers (`scorer: a,b`) it registers each scorer's `<metric>@<slug>`
    metrics, summed or averaged as the plain ones (compress/toxicity/metrics.py)."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})
        docs = self.dataset[self.config.test_split]
        specs = split_specs(docs[0]["scorer"]) if len(docs) else []
        for spec in specs if len(specs) > 1 else []:
            for name in toxicity_metrics.SCORED:
                key = f"{name}@{spec_slug(spec)}"
                self._aggregation_list[key] = toxicity_metrics.total if name in toxicity_metrics.SUMMED \
                    else toxicity_metrics.mean
                self._higher_is_better[key] = False
