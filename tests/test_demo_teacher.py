"""The demo's teacher, trained with its default recipe on the bundled text as `make demo` trains it, meets its two
goals: it has learned context (held-out token perplexity at most half that of a unigram model of the same text
and tokenizer) and it prefers StereoSet's meaningful candidates to the unrelated ones (LMS on the bundled sample
above the 50 of a model indifferent to meaning, by the lower end of a bootstrap interval).

LMS is computed here from the model's softmax by a transcription of the official generative scorer
(moinnadeem/StereoSet `code/eval_generative_models.py` and `code/evaluation.py`), not through compfair's lm-eval
tasks: a sentence's score is the geometric mean of its token probabilities, the first token given
<|endoftext|> alone and each later one given the sentence so far; an intersentence candidate's tokens are scored
after its context (compfair's zero-shot form of that split); LMS counts, per target term, how often the
stereotype and the anti-stereotype each beat the unrelated candidate, over both splits together, and averages
the terms.
"""

import math
import random
from collections import Counter, defaultdict

import pytest
import torch

from compress.bias import data as bias_data
from compress.study import demo_teacher
from compress.study.runner import REPO

STEREOSET = REPO / "compress" / "study" / "demo_data" / "stereoset" / "dev.json"


def _token_probabilities(model, ids: list[int]) -> list[float]:
    """p(ids[i] | ids[:i]) for i >= 1, in a window of the model's positions kept at the right end, as lm-eval
    keeps it."""
    ids = ids[-(model.config.n_positions + 1):]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids[:-1]])).logits[0].double(), dim=-1)
    return [probs[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _geometric_mean(probabilities: list[float]) -> float:
    return 2 ** (sum(math.log2(p) for p in probabilities) / len(probabilities))


def _sentence_score(model, tokenizer, split: str, example, label: str) -> float:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    sentence = example.sentences[label]
    if split == "intrasentence":
        tokens = encode(sentence)
        first = _token_probabilities(model, [tokenizer.eos_token_id, tokens[0]])
        return _geometric_mean(first + (_token_probabilities(model, tokens) if len(tokens) > 1 else []))
    context = example.context.strip()
    context += "" if context.endswith((".", "!", "?")) else "."
    whole, before = encode(context + " " + sentence), encode(context)
    return _geometric_mean(_token_probabilities(model, whole)[-(len(whole) - len(before)):])


def _official_lms(scored: list[tuple[str, dict]]) -> float:
    counts = defaultdict(Counter)
    for target, score in scored:
        counts[target]["related"] += (score["stereotype"] > score["unrelated"]) + \
            (score["anti-stereotype"] > score["unrelated"])
        counts[target]["total"] += 1
    return sum(c["related"] / (2.0 * c["total"]) * 100.0 for c in counts.values()) / len(counts)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("demo_teacher")
    corpus, heldout = demo_teacher.write_demo_text(root / "data")
    record = demo_teacher.train_demo_teacher(root / "teacher", corpus, heldout, log=lambda *_: None)
    model = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    return record, model, AutoTokenizer.from_pretrained(root / "teacher")


@pytest.mark.slow
def test_the_demo_teacher_has_learned_context_not_only_frequencies(teacher):
    record, model, _ = teacher
    assert record["steps"] == demo_teacher.TeacherRecipe.steps  # the default recipe, as make demo trains it
    assert model.config.resid_pdrop == 0.0 and model.config.activation_function == "gelu_pytorch_tanh"
    assert record["heldout_token_perplexity"] <= 0.5 * record["unigram_token_perplexity"]


@pytest.mark.slow
def test_the_demo_teacher_prefers_meaningful_stereoset_candidates(teacher):
    _, model, tokenizer = teacher
    examples = [(split, e) for split in ("intrasentence", "intersentence")
                for e in bias_data.load_stereoset(split, STEREOSET)]
    assert len(examples) == 945
    scored = [(e.target, {label: _sentence_score(model, tokenizer, split, e, label) for label in e.sentences})
              for split, e in examples]
    rng = random.Random(0)
    resampled = sorted(_official_lms(rng.choices(scored, k=len(scored))) for _ in range(1000))
    lms, low = _official_lms(scored), resampled[25]
    assert low > 50.0, f"StereoSet LMS {lms:.1f}, 95% interval from {low:.1f}"


def test_the_fused_gelu_is_gpt2s_gelu():
    """The recipe's activation is GPT-2's own (gelu_new, the tanh approximation), not another GELU."""
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 10001, dtype=torch.float64)
    torch.testing.assert_close(ACT2FN[demo_teacher.TeacherRecipe.activation](x), ACT2FN["gelu_new"](x),
                               rtol=1e-12, atol=1e-12)
