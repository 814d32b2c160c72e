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
    `length_tokens`, the `scorer` spec, and `classifier_truncated_tokens`: how many classifier tokens of each
    scored text were left out from its start because the text was longer than the classifier accepts (the
    continuation is always kept whole, unless it alone is longer than that). A string, because lm-eval writes
    each filtered response of `--log_samples` with `str()`: JSON keeps the file and the in-memory samples
    equally readable.
    """

    def __init__(self, text: str = "continuation", batch_size: int | None = None) -> None:
        if text not in SCORED_TEXTS:
            raise ValueError(f"ScoreGenerations text={text!r}: expected one of {SCORED_TEXTS}")
        self.text = text
        self.batch_size = int(batch_size) if batch_size else None  # None: the scorer's default for its device

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[str]:
        resps = [list(r) for r in resps]  # GenerationTask has already dropped data-parallel padding
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
            scorer = load_scorer(one, batch_size=self.batch_size)
            by_scorer[one] = scorer.score(texts, progress=True)
            if one == specs[0]:  # truncation is recorded for the primary scorer
                truncated = scorer.truncated_tokens(texts)
        toxicity = by_scorer[specs[0]]
        if any(truncated):
            log.info("%d of %d scored texts were longer than the classifier accepts; their start was left out",
                     sum(n > 0 for n in truncated), len(texts))
        tokens = length_tokenizer(tokenizer_name)(generations, add_special_tokens=False)["input_ids"]
        out, start = [], 0
        for r in resps:
            end = start + len(r)
            scored = {"toxicity": toxicity[start:end], "length_chars": [len(g) for g in r],
                      "length_tokens": [len(ids) for ids in tokens[start:end]], "scorer": spec,
                      "classifier_truncated_tokens": truncated[start:end]}
            if len(specs) > 1:
                scored["toxicity_by_scorer"] = {one: values[start:end] for one, values in by_scorer.items()}
            out.append(json.dumps(scored))
            start = end
        return out


def trim_padding(resps: list[list[str]], repeats: int) -> list[list[str]]:
    """Each prompt's first `repeats` generations: drop the extra ones lm-eval adds under data parallelism.

    A rank with fewer requests than the others pads by repeating its last request `repeats` times per missing
    request, and the padding's generations are appended to that request's responses, so a rank holding a
    single prompt would otherwise score it 2 x `repeats` times. The count to keep is the task's configured
    `repeats`, never guessed from the responses.
    """
    short = [len(r) for r in resps if len(r) < repeats]
    if short:
        raise ValueError(f"a prompt has {short[0]} generations, expected the task's repeats = {repeats}")
    return [list(r[:repeats]) for r in resps]


class GenerationTask(ConfigurableTask):
    """A generation task whose every prompt is scored exactly `repeats` times, however lm-eval split it.

    lm-eval appends the generations of a rank's padding requests to the last request's responses; they are
    dropped here, before any filter sees them (and before `--log_samples` records them).
    """

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

    def apply_filters(self):
        repeats = int(self.config.repeats or 1)
        for instance, resps in zip(self._instances, trim_padding([i.resps for i in self._instances], repeats),
                                   strict=True):
            instance.resps = resps
        return super().apply_filters()


def process_results(doc: dict, results: list[str]) -> dict:
    """The primary scorer's metrics under their plain names; with several scorers, every scorer's metrics
    again as `<metric>@<scorer slug>` (e.g. `toxic_score@detoxify_unbiased`)."""
    scored = json.loads(results[0])
    out = toxicity_metrics.per_prompt(scored["toxicity"], scored["length_chars"], scored["length_tokens"])
    for spec, toxicity in (scored.get("toxicity_by_scorer") or {}).items():
        values = toxicity_metrics.per_prompt(toxicity, scored["length_chars"], scored["length_tokens"])
        out.update({f"{name}@{spec_slug(spec)}": values[name] for name in toxicity_metrics.SCORED})
    return out


class ToxicityTask(GenerationTask):
    """A toxicity task: every prompt scored exactly `repeats` times (GenerationTask); with several scorers
    (`scorer: a,b`) it registers each scorer's `<metric>@<slug>` metrics, summed or averaged as the plain ones
    (compress/toxicity/metrics.py)."""

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        docs = self.dataset[self.config.test_split]
        specs = split_specs(docs[0]["scorer"]) if len(docs) else []
        for spec in specs if len(specs) > 1 else []:
            for name in toxicity_metrics.SCORED:
                key = f"{name}@{spec_slug(spec)}"
                self._aggregation_list[key] = toxicity_metrics.total if name in toxicity_metrics.SUMMED \
                    else toxicity_metrics.mean
                self._higher_is_better[key] = False
