"""How each bias sentence's likelihood is asked of lm-eval: the (context, continuation) requests behind it.

An lm-eval `loglikelihood` request (context, continuation) returns log p(continuation | context); with an
empty context lm-eval puts the model's prefix token in front (GPT-2's is <|endoftext|>). Requests only, so
any backend runs them: a causal model reads context + continuation as one sequence, a seq2seq model
(`backend=seq2seq`) reads the context with its encoder and scores the continuation with its decoder.

StereoSet intrasentence, as the official generative evaluation (`code/eval_generative_models.py`) scores a
sentence t0 t1 .. tn: the first token given <|endoftext|> alone, each later token given only the sentence's
preceding tokens (the start token is not in that context), averaged per token. Two requests give exactly that:

    ("", t0)              log p(t0 | <|endoftext|>)      shared by every sentence that starts with t0
    (t0, t1 .. tn)        sum_i log p(ti | t0 .. ti-1)

so the evaluated model's tokenizer is needed to cut t0 off the text. On a seq2seq model the same two
requests read log p_dec(t0 | encoder: prefix token) + log p_dec(t1 .. tn | encoder: t0).

StereoSet intersentence: (context, " " + sentence), the candidate's tokens given the context, averaged per
token; as in the official script the context gets a final "." when it has no final punctuation. This is a
zero-shot variant: the official GPT-2 intersentence evaluation scores the pair with a trained
next-sentence-prediction head (`ModelNSP`), so the numbers are not comparable with published ones.

WinoBias: ("", sentence), the sentence's total log-likelihood after the prefix token.

Per-token averages need each continuation's token count, which depends on how lm-eval encodes the pair:
a causal model encodes context + continuation together and keeps the tokens past the context's; a seq2seq
model encodes the continuation on its own. `continuation_tokens` mirrors both.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

FINAL_PUNCTUATION = (".", "!", "?")
TOKENIZER_KEYS = ("tokenizer", "pretrained", "model")  # where lm-eval's model args name the model


class TokenizerNotGiven(ValueError):
    """StereoSet needs the evaluated model's tokenizer and none was named."""


def model_tokenizer(model_args: Mapping):
    """The tokenizer of the evaluated model, named by its lm-eval model args (`tokenizer`, else `pretrained`)."""
    name = next((model_args[k] for k in TOKENIZER_KEYS if isinstance(model_args.get(k), str) and model_args[k]),
                None)
    if name is None:
        raise TokenizerNotGiven("StereoSet splits sentences with the evaluated model's tokenizer: pass "
                                "--model_args pretrained=... (or tokenizer=...), or metadata {\"tokenizer\": ...}")
    return _load_tokenizer(name, str(model_args.get("revision") or "main"), bool(model_args.get("trust_remote_code")))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str, revision: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)


def model_backend(model_args: Mapping) -> str:
    """"causal" or "seq2seq", decided as lm-eval's `hf` model decides it: `backend=`, else the config's type."""
    backend = model_args.get("backend", "default")
    if backend in ("causal", "seq2seq"):
        return backend
    name = model_args.get("pretrained")
    if not isinstance(name, str) or not name:
        return "causal"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(name, revision=str(model_args.get("revision") or "main"),
                                        trust_remote_code=bool(model_args.get("trust_remote_code")))
    seq2seq = getattr(config, "model_type", None) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    return "seq2seq" if seq2seq else "causal"


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def continuation_tokens(tokenizer, context: str, continuation: str, backend: str) -> int:
    """How many tokens lm-eval scores for (context, continuation); context without trailing whitespace."""
    if not context or backend == "seq2seq":
        return len(_encode(tokenizer, continuation))
    return len(_encode(tokenizer, context + continuation)) - len(_encode(tokenizer, context))


def first_token_requests(sentence: str, tokenizer, backend: str) -> dict:
    """{"requests", "n_tokens", "exact"} for a sentence scored as the official intrasentence evaluation does.

    `exact` is False when the first token does not decode to a clean prefix of the text (e.g. half of a
    multi-byte character); such a sentence is scored whole after the prefix token instead.
    """
    ids = _encode(tokenizer, sentence)
    first = tokenizer.decode(ids[:1])
    # lm-eval moves a context's trailing whitespace into the continuation, so t0 must not end in any.
    exact = (bool(ids) and sentence.startswith(first) and first == first.rstrip()
             and _encode(tokenizer, first) == ids[:1])
    if not exact:
        return {"requests": [["", sentence]], "n_tokens": continuation_tokens(tokenizer, "", sentence, backend),
                "exact": False}
    rest = sentence[len(first):]
    requests = [["", first]] + ([[first, rest]] if rest else [])
    n_tokens = 1 + (continuation_tokens(tokenizer, first, rest, backend) if rest else 0)
    return {"requests": requests, "n_tokens": n_tokens, "exact": True}


def context_requests(context: str, sentence: str, tokenizer, backend: str) -> dict:
    """{"requests", "n_tokens"} for a candidate sentence scored after its (intersentence) context."""
    context = context.strip()
    if not context.endswith(FINAL_PUNCTUATION):
        context += "."
    continuation = " " + sentence
    return {"requests": [[context, continuation]],
            "n_tokens": continuation_tokens(tokenizer, context, continuation, backend)}


def whole_sentence_requests(sentence: str) -> dict:
    """{"requests"} for a sentence's total log-likelihood after the prefix token (WinoBias)."""
    return {"requests": [["", sentence]]}
