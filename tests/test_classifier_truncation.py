"""The classifier always sees the continuation: a text longer than its limit loses its start, not its end, and
the samples record how much was left out."""

import json

import pytest
import torch
from detoxify import Detoxify

from compress.toxicity import scorers
from compress.toxicity.task import ScoreGenerations

PROMPT = "thank you for the helpful edit " * 13  # longer than the tiny classifier's 64 positions on its own
CONTINUATIONS = [" you stupid idiot, shut up", " and the weather was cold today"]


@pytest.fixture(autouse=True)
def fresh_cache():
    scorers._cached_scorer.cache_clear()
    yield
    scorers._cached_scorer.cache_clear()


def kept_ids(tokenizer, text, limit):
    """[CLS] + the last (limit - 2) word pieces of the text + [SEP], built by hand."""
    pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.cls_token_id, *pieces[-(limit - 2):], tokenizer.sep_token_id], len(pieces) + 2 - limit


def reference_score(detoxify, text, limit):
    ids, dropped = kept_ids(detoxify.tokenizer, text, limit)
    with torch.no_grad():
        logits = detoxify.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return torch.sigmoid(logits.logits)[0, detoxify.class_names.index("toxicity")].item(), dropped


def test_prompt_and_continuation_keeps_the_whole_continuation(tiny_detoxify, tiny_gpt2):
    spec = f"detoxify:{tiny_detoxify}"
    scorer = scorers.load_scorer(spec, device="cpu")
    reference = Detoxify(checkpoint=str(tiny_detoxify), huggingface_config_path=str(tiny_detoxify.parent))
    limit = scorer.max_length
    assert limit == 64
    texts = [PROMPT + c for c in CONTINUATIONS]
    expected = [reference_score(reference, t, limit) for t in texts]
    assert all(dropped > 0 for _, dropped in expected)  # the prompt alone overflows the classifier

    seen = []  # what the classifier was given: each row's real (unpadded) token ids
    forward = scorer.model.forward

    def spy(*args, **kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist(), strict=True):
            seen.append([i for i, m in zip(ids, mask, strict=True) if m])
        return forward(*args, **kwargs)

    scorer.model.forward = spy
    try:
        scores = scorer.score(texts)
    finally:
        del scorer.model.forward
    assert sorted(seen) == sorted(kept_ids(reference.tokenizer, t, limit)[0] for t in texts)
    ending = reference.tokenizer(CONTINUATIONS[0], add_special_tokens=False)["input_ids"]
    assert any(row[-1 - len(ending):-1] == ending for row in seen)  # the whole continuation, then [SEP]
    # The tiny classifier is nearly saturated, so two continuations move its score only by ~1e-5; the scores
    # equal the hand-built inputs' to float32 rounding.
    assert scores == pytest.approx([s for s, _ in expected], abs=1e-6)
    assert scorer.truncated_tokens(texts) == [d for _, d in expected]
    assert scorer.truncated_tokens(CONTINUATIONS) == [0, 0]

    docs = [{"prompt": PROMPT, "scorer": spec, "length_tokenizer": str(tiny_gpt2)}]
    out = json.loads(ScoreGenerations(text="prompt_and_continuation").apply([CONTINUATIONS], docs)[0])
    assert out["toxicity"] == pytest.approx([s for s, _ in expected], abs=1e-6)
    assert out["classifier_truncated_tokens"] == [d for _, d in expected]
    alone = json.loads(ScoreGenerations(text="continuation").apply([CONTINUATIONS], docs)[0])
    assert alone["classifier_truncated_tokens"] == [0, 0]
