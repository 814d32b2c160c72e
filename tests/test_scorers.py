"""Scorer registry: batched scores equal one-at-a-time scores, truncation, label choice, offline errors."""

import urllib.error

import pytest
import torch
from detoxify import Detoxify

from compress.common.tiny_models import TOXICITY_CLASSES, corpus_lines
from compress.toxicity import scorers
from compress.toxicity.scorers import ScorerError, load_scorer

TEXTS = [
    "You are a stupid idiot and nobody likes you.",
    "Thank you for the helpful edit.",
    "",
    "What a pathetic loser, go away " * 3,
    "The weather was cold and the river was frozen, so the children stayed inside.",
    "shut up",
]


@pytest.fixture(autouse=True)
def fresh_cache():
    scorers._cached_scorer.cache_clear()
    yield
    scorers._cached_scorer.cache_clear()


def test_batched_detoxify_scores_match_one_text_at_a_time(tiny_detoxify):
    reference = Detoxify(checkpoint=str(tiny_detoxify), huggingface_config_path=str(tiny_detoxify.parent))
    texts = corpus_lines() + TEXTS
    scorer = load_scorer(f"detoxify:{tiny_detoxify}", device="cpu", batch_size=4)  # several uneven batches
    batched = scorer.score(texts)
    one_by_one = [reference.predict(text)["toxicity"] for text in texts]
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    insult, thanks = batched[texts.index(TEXTS[0])], batched[texts.index(TEXTS[1])]
    assert insult > 0.5 > thanks  # the fitted tiny classifier tells an insult from thanks
    assert scorer.score([]) == []


def test_default_batch_size_depends_on_the_device(tiny_detoxify):
    assert load_scorer(f"detoxify:{tiny_detoxify}", device="cpu").batch_size == 16
    assert load_scorer(f"detoxify:{tiny_detoxify}", device="cpu", batch_size=5).batch_size == 5
    assert scorers.default_batch_size("cuda:1") == 64


def test_texts_longer_than_the_classifier_are_truncated_not_rejected(tiny_detoxify):
    scorer = load_scorer(f"detoxify:{tiny_detoxify}", device="cpu")
    assert scorer.max_length == 64
    head = "thank you for the helpful edit " * 13  # 78 words: past the 64-position table on its own
    long_text = head + "you stupid idiot " * 200
    truncated = scorer.tokenizer.decode(scorer.tokenizer(long_text, truncation=True, max_length=64)["input_ids"],
                                        skip_special_tokens=True)
    assert scorer.score([long_text]) == pytest.approx(scorer.score([truncated]), abs=1e-5)


def test_spec_comes_from_the_environment_when_not_given(tiny_detoxify, monkeypatch):
    monkeypatch.setenv("COMPFAIR_SCORER", f"detoxify:{tiny_detoxify}")
    assert load_scorer(device="cpu").spec == f"detoxify:{tiny_detoxify}"
    monkeypatch.delenv("COMPFAIR_SCORER")
    assert scorers.resolve_spec() == "detoxify:original"


def test_unreachable_detoxify_weights_name_the_offline_choices(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ScorerError) as err:
        load_scorer("detoxify:original", device="cpu")
    message = str(err.value)
    assert "could not download the Detoxify 'original' weights" in message
    assert "detoxify:/path/to/model.ckpt" in message and "hf:" in message and "profanity-check" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec, expected", [
    ("detoxify:/nowhere/model.ckpt", "does not exist"),
    ("perspective", "unknown scorer 'perspective'"),
    ("hf:/nowhere/classifier", "could not load the Hugging Face classifier"),
])
def test_bad_specs_fail_with_one_line(spec, expected):
    with pytest.raises(ScorerError, match=expected) as err:
        load_scorer(spec, device="cpu")
    assert "\n" not in str(err.value)


def save_hf_classifier(folder, tiny_detoxify, **label_options):
    """A randomly initialised tiny BERT classifier saved in plain Hugging Face format."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    config = BertConfig.from_pretrained(tiny_detoxify.parent, **label_options)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    tokenizer = BertTokenizerFast.from_pretrained(tiny_detoxify.parent)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory, tiny_detoxify):
    """Two labels scored by softmax: not-toxic / TOXIC."""
    folder = tmp_path_factory.mktemp("hf-classifier")
    model, tokenizer = save_hf_classifier(folder, tiny_detoxify, num_labels=2,
                                          problem_type="single_label_classification",
                                          id2label={0: "not-toxic", 1: "TOXIC"}, label2id={"not-toxic": 0, "TOXIC": 1})
    return folder, model, tokenizer


def test_hf_classifier_finds_the_toxic_label_and_applies_softmax(hf_classifier):
    folder, model, tokenizer = hf_classifier
    scorer = load_scorer(f"hf:{folder}", device="cpu", batch_size=2)
    assert scorer.toxic_index == 1 and not scorer.multi_label
    with torch.no_grad():
        expected = [torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits, -1)[0, 1].item() for t in TEXTS]
    assert scorer.score(TEXTS) == pytest.approx(expected, abs=1e-5)
    # Naming the label picks the other column: the two add up to one.
    other = load_scorer(f"hf:{folder}#not-toxic", device="cpu").score(TEXTS)
    assert [a + b for a, b in zip(other, expected)] == pytest.approx([1.0] * len(TEXTS), abs=1e-5)
    with pytest.raises(ScorerError, match="has no label 'insult'"):
        load_scorer(f"hf:{folder}#insult", device="cpu")


def test_hf_classifier_without_a_toxic_label_asks_for_one(tiny_detoxify, tmp_path):
    save_hf_classifier(tmp_path, tiny_detoxify)  # six multi-label outputs named LABEL_0..LABEL_5
    with pytest.raises(ScorerError, match=r"cannot tell which label .* hf:.*#LABEL"):
        load_scorer(f"hf:{tmp_path}", device="cpu")
    scorer = load_scorer(f"hf:{tmp_path}#LABEL_0", device="cpu")
    assert scorer.multi_label and scorer.toxic_index == 0
    assert scorer.model.config.num_labels == len(TOXICITY_CLASSES)


def test_profanity_check_works_offline():
    pytest.importorskip("profanity_check")
    scorer = load_scorer("profanity-check")
    insult, thanks = scorer.score(["fuck off, you stupid shit", "thank you for the helpful edit"])
    assert 0 <= thanks < 0.5 < insult <= 1
