"""What the lm-eval bias tasks (`lm_eval_tasks/bias/`) call: their documents, the task class that requests
each distinct likelihood once, per-document results and the aggregations.

Run settings come from lm-eval's metadata, which holds `--metadata` and the `--model_args`:

    data_dir         --metadata data_dir, else $COMPFAIR_DATA_DIR: reads <data_dir>/stereoset/dev.json and
                     <data_dir>/winobias/ (the official files); without one, the hub copies
    stereoset_file   --metadata stereoset_file: any StereoSet file `compress.bias.data` reads, instead
    tokenizer        --model_args tokenizer / pretrained: StereoSet cuts first tokens and counts tokens with it

A document lists its sentences, each with the (context, continuation) requests whose log-likelihoods add up to
its score (`compress.bias.requests`). `SharedRequestTask` requests every distinct pair once per process and
hands each document the sums per sentence.

Per-document values (what `--log_samples` records under each metric name):

    StereoSet  ss, lms, icat and their per-domain forms (ss_gender, ...): the self-describing item
               {"id", "target", "domain", "stereotype", "anti-stereotype", "unrelated"} of sentence scores
               (per-token geometric-mean probabilities); `compress.bias.metrics.stereoset_scores(items)`
               turns a list of them into the official numbers. The three counts: 0 or 1.
    WinoBias   anti_count (0/1, summed), anti_rate, pro_rate, bias_gap (percent, averaged), over minimal
               pairs only (`compress.bias.winobias_pairs`; the other pairs' samples have none of these and
               `doc.minimal` false, `doc.excluded_because` why); over every pair anti_count_all, anti_rate_all;
               excluded_count (0/1, summed).

lm-eval computes standard errors only for its own aggregations (mean, ...). For the others each metric `m` has
a companion metric `m_stderr` whose aggregation is the standard error of `m`; it is emitted right after `m`, so
its value is the one lm-eval keeps under the `m_stderr` key that tables and group aggregation read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from compress.bias import crows_pairs, winobias_pairs
from compress.bias import data as bias_data
from compress.bias import metrics as bias_metrics
from compress.bias import requests as bias_requests

log = logging.getLogger(__name__)

STEREOSET_SCORES = ("ss", "lms", "icat")
WINOBIAS_LABELS = ("pro", "anti")


# ------------------------------------------------------------------------------------------ documents


def stereoset_docs(subset: str, **metadata):
    """The documents of `compfair_stereoset_<subset>` as a DatasetDict with one `test` split."""
    import datasets

    data_dir = bias_data.data_dir_from(metadata)
    path = metadata.get("stereoset_file") or (data_dir / "stereoset" / "dev.json" if data_dir else None)
    examples = bias_data.load_stereoset(subset, path)
    tokenizer = bias_requests.model_tokenizer(metadata)
    backend = bias_requests.model_backend(metadata)
    docs, inexact = [], 0
    for example in examples:
        sentences = []
        for label in bias_metrics.LABELS:
            text = example.sentences[label]
            if subset == "intrasentence":
                requests = bias_requests.first_token_requests(text, tokenizer, backend)
                inexact += not requests.pop("exact")
            else:
                requests = bias_requests.context_requests(example.context, text, tokenizer, backend)
            sentences.append({"label": label, "text": text, **requests})
        docs.append({"id": example.id, "target": example.target, "bias_type": example.bias_type,
                     "context": example.context, "sentences": sentences})
    if inexact:
        log.warning("StereoSet %s: %d sentences have a first token that is not a clean text prefix; they are "
                    "scored whole after the start token", subset, inexact)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def winobias_docs(subset: str, **metadata):
    """The documents of `compfair_winobias_<subset>` (subset `type1_dev`, ...): one pro/anti pair each."""
    import datasets

    kind, _, split = subset.partition("_")
    data_dir = bias_data.data_dir_from(metadata)
    pairs = bias_data.load_winobias(kind, split, data_dir / "winobias" if data_dir else None)
    docs = []
    for pair in pairs:
        # A pair whose sentences differ by more than their gendered words is kept (for the all-pairs numbers)
        # but marked: `minimal` false and `excluded_because` saying what else differs.
        reason = winobias_pairs.pair_difference(pair.pro, pair.anti)
        docs.append({"index": pair.index, "subset": subset, "pro": pair.pro, "anti": pair.anti,
                     "minimal": reason is None, "excluded_because": reason or "",
                     "sentences": [{"label": label, "text": text, **bias_requests.whole_sentence_requests(text)}
                                   for label, text in zip(WINOBIAS_LABELS, (pair.pro, pair.anti), strict=True)]})
    excluded = sum(not doc["minimal"] for doc in docs)
    if excluded:
        log.info("WinoBias %s: %d of %d pairs are not minimal pairs; the default metrics leave them out",
                 subset, excluded, len(docs))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def crows_pairs_docs(bias_type: str | None = None, **metadata):
    """The documents of `compfair_crows_pairs` (every pair) or of one bias type's task: each pair's two
    sentences scored twice, by bias-bench's per-token geometric mean (`score: mean`) and by total
    log-likelihood (`score: total`, lm-eval's built-in scoring)."""
    import datasets

    pairs = crows_pairs.load_crows_pairs(crows_pairs.crows_pairs_path(metadata))
    if bias_type is not None:
        if bias_type not in crows_pairs.BIAS_TYPES:
            raise bias_data.BiasDataError(f"CrowS-Pairs bias type {bias_type!r}: expected one of "
                                          f"{crows_pairs.BIAS_TYPES}")
        pairs = [p for p in pairs if p.bias_type == bias_type]
        if not pairs:
            source = crows_pairs.crows_pairs_path(metadata) or crows_pairs.HUB[0]
            raise bias_data.BiasDataError(f"CrowS-Pairs {source}: no pair of bias type {bias_type!r}")
    tokenizer = bias_requests.model_tokenizer(metadata)
    backend = bias_requests.model_backend(metadata)
    docs, inexact = [], 0
    for pair in pairs:
        sentences = []
        for label, text in zip(crows_pairs.SENTENCE_LABELS, (pair.sent_more, pair.sent_less), strict=True):
            requests = bias_requests.first_token_requests(text, tokenizer, backend)
            inexact += not requests.pop("exact")
            sentences.append({"label": label, "score": "mean", "text": text, **requests})
        for label, text in zip(crows_pairs.SENTENCE_LABELS, (pair.sent_more, pair.sent_less), strict=True):
            sentences.append({"label": label, "score": "total", "text": text, **bias_requests.whole_sentence_requests(
                text), "n_tokens": bias_requests.continuation_tokens(tokenizer, "", text, backend)})
        docs.append({"index": pair.index, "bias_type": pair.bias_type, "direction": pair.direction,
                     "sent_more": pair.sent_more, "sent_less": pair.sent_less, "sentences": sentences})
    if inexact:
        log.warning("CrowS-Pairs: %d sentences have a first token that is not a clean text prefix; they are "
                    "scored whole after the start token", inexact)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# ------------------------------------------------------------------------------------------ the task


class SharedRequestTask(ConfigurableTask):
    """A task whose documents name the (context, continuation) pairs their sentences need.

    Many sentences share a request (StereoSet's first-token term), so each distinct pair is requested once:
    a document issues only the pairs no earlier document of this process has issued, and once the model
    has answered, every document reads its pairs from this process's table. Each process builds the
    requests of its own share of the documents (data parallelism, --limit), so every pair a document needs
    is answered on its own process. The one repeat: a document all of whose pairs were issued before
    re-issues its first, because a logged sample needs a request of its own.

    `process_results` in the config receives (doc, [log-likelihood of each sentence, in doc order]).
    """

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})
        self._issued: set[tuple[str, str]] = set()
        self._loglikelihood: dict[tuple[str, str], float] = {}

    def build_all_requests(self, **kwargs) -> None:
        self._issued = set()
        super().build_all_requests(**kwargs)

    def construct_requests(self, doc: dict, ctx, **kwargs) -> list[Instance]:
        # Sentences are scored as they are: no chat template, no few-shot context.
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        pairs = list(dict.fromkeys(tuple(pair) for sentence in doc["sentences"] for pair in sentence["requests"]))
        new = [pair for pair in pairs if pair not in self._issued] or pairs[:1]
        self._issued.update(new)
        return [Instance(request_type="loglikelihood", doc=doc, arguments=pair, idx=i, **kwargs)
                for i, pair in enumerate(new)]

    def apply_filters(self):
        super().apply_filters()
        self._loglikelihood = {tuple(inst.arguments): inst.resps[0][0] for inst in self._instances}

    def process_results(self, doc: dict, results) -> dict:
        logliks = [sum(self._loglikelihood[tuple(pair)] for pair in sentence["requests"])
                   for sentence in doc["sentences"]]
        return self.config.process_results(doc, logliks)


# ------------------------------------------------------------------------------------------ results


def stereoset_results(doc: dict, logliks: Sequence[float]) -> dict:
    """Per-document values of a StereoSet task (see the module docstring)."""
    scores = {sentence["label"]: math.exp(loglik / sentence["n_tokens"])
              for sentence, loglik in zip(doc["sentences"], logliks, strict=True)}
    item = bias_metrics.stereoset_item(doc["target"], doc["bias_type"], scores, doc_id=doc["id"])
    results = {}
    for domain in (None, *bias_metrics.DOMAINS):
        for score in STEREOSET_SCORES:
            name = score if domain is None else f"{score}_{domain}"
            results[name] = results[f"{name}_stderr"] = item
    top = bias_metrics.top_choice(item)
    for label, name in bias_metrics.COUNT_NAMES.items():
        results[name] = results[f"{name}_stderr"] = float(top == label)
    return results


def winobias_results(doc: dict, logliks: Sequence[float]) -> dict:
    """Per-document values of a WinoBias task: the pair's numbers from `bias_metrics.winobias_doc_values`.

    Every pair gives `anti_count_all` / `anti_rate_all` (the paper's all-pairs numbers) and `excluded_count`
    (1 for a pair that is not a minimal pair); only a minimal pair gives the default metrics, so lm-eval
    aggregates those over the minimal pairs alone (a document that omits a metric does not count in it).
    """
    by_label = {sentence["label"]: loglik for sentence, loglik in zip(doc["sentences"], logliks, strict=True)}
    values = bias_metrics.winobias_doc_values(by_label["pro"], by_label["anti"])
    minimal = doc.get("minimal", True)
    results = {"anti_count_all": values["anti_count"], "anti_count_all_stderr": values["anti_count"],
               "anti_rate_all": values["anti_rate"], "excluded_count": float(not minimal)}
    if minimal:
        results.update({"anti_count": values["anti_count"], "anti_count_stderr": values["anti_count"],
                        **{name: values[name] for name in ("anti_rate", "pro_rate", "bias_gap")}})
    return results


def crows_pairs_results(doc: dict, logliks: Sequence[float]) -> dict:
    """Per-pair values of a CrowS-Pairs task (`compress.bias.crows_pairs.pair_values`), each metric's
    companion `_stderr` right after it where lm-eval cannot compute one."""
    scored = {}
    for sentence, loglik in zip(doc["sentences"], logliks, strict=True):
        value = math.exp(loglik / sentence["n_tokens"]) if sentence["score"] == "mean" else loglik
        scored[(sentence["label"], sentence["score"])] = value
    values = crows_pairs.pair_values(doc["direction"], scored[("more", "mean")], scored[("less", "mean")],
                                     scored[("more", "total")], scored[("less", "total")])
    results = {}
    for name, value in values.items():
        results[name] = value
        if name in ("stereo_score", "antistereo_score"):
            results[f"{name}_stderr"] = value
    return results


class StereoSetAggregate:
    """Aggregation of one StereoSet score (ss, lms or icat), overall or for one domain, or its bootstrap stderr."""

    def __init__(self, score: str, domain: str | None = None, stderr: bool = False) -> None:
        if score not in STEREOSET_SCORES or domain not in (None, *bias_metrics.DOMAINS):
            raise ValueError(f"StereoSetAggregate({score!r}, {domain!r}): unknown score or domain")
        self.score, self.domain, self.stderr = score, domain, stderr

    def __call__(self, items: Sequence[dict]) -> float:
        if self.domain is not None:
            items = [item for item in items if item["domain"] == self.domain]
        if self.stderr:
            return bias_metrics.stereoset_bootstrap_stderr(items)[self.score]
        return bias_metrics.stereoset_scores(items)[self.score]

    def __repr__(self) -> str:
        return f"StereoSetAggregate({self.score!r}, domain={self.domain!r}, stderr={self.stderr})"


def total(values: Sequence[float]) -> float:
    return float(sum(values))
