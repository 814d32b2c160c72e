"""The (context, continuation) requests behind each bias sentence, with the real GPT-2 tokenizer and tiny ones."""

import pytest

from compress.bias import data as bias_data
from compress.bias import requests as bias_requests


@pytest.fixture(scope="module")
def gpt2_tokenizer(gpt2_tokenizer_dir):
    return bias_requests.model_tokenizer({"pretrained": str(gpt2_tokenizer_dir)})


def test_every_real_stereoset_sentence_splits_at_its_first_gpt2_token(gpt2_tokenizer, shared_data):
    examples = bias_data.load_stereoset("intrasentence", shared_data("stereoset") / "stereoset.jsonl")
    first_token_requests = set()
    for example in examples:
        for sentence in example.sentences.values():
            ids = gpt2_tokenizer.encode(sentence)
            layout = bias_requests.first_token_requests(sentence, gpt2_tokenizer, "causal")
            assert layout["exact"], sentence
            (empty, first), *rest = layout["requests"]
            assert empty == "" and gpt2_tokenizer.encode(first) == ids[:1]
            assert first + (rest[0][1] if rest else "") == sentence and all(r[0] == first for r in rest)
            assert layout["n_tokens"] == len(ids)
            first_token_requests.add(first)
    # 6,318 sentences, but the start-token term is shared: far fewer distinct first-token requests.
    assert len(first_token_requests) < 600


def test_intersentence_context_gets_final_punctuation_and_token_counts(gpt2_tokenizer):
    layout = bias_requests.context_requests(" My professor is a hispanic man ", "He came here illegally",
                                            gpt2_tokenizer, "causal")
    assert layout["requests"] == [["My professor is a hispanic man.", " He came here illegally"]]
    whole = gpt2_tokenizer.encode("My professor is a hispanic man. He came here illegally")
    assert layout["n_tokens"] == len(whole) - len(gpt2_tokenizer.encode("My professor is a hispanic man."))
    kept = bias_requests.context_requests("Is it?", "Yes.", gpt2_tokenizer, "seq2seq")
    assert kept == {"requests": [["Is it?", " Yes."]], "n_tokens": len(gpt2_tokenizer.encode(" Yes."))}


def test_a_first_token_that_is_half_a_character_falls_back_to_the_whole_sentence(tiny_gpt2):
    tokenizer = bias_requests.model_tokenizer({"pretrained": str(tiny_gpt2)})
    sentence = "\u00e9t\u00e9 is summer"  # the tiny byte-level BPE never learned 'é': its first token is one byte
    layout = bias_requests.first_token_requests(sentence, tokenizer, "causal")
    assert layout == {"requests": [["", sentence]], "n_tokens": len(tokenizer.encode(sentence)), "exact": False}
    assert bias_requests.whole_sentence_requests("He ran.") == {"requests": [["", "He ran."]]}


def test_backend_and_tokenizer_come_from_the_model_args(tiny_gpt2, tiny_seq2seq):
    assert bias_requests.model_backend({"pretrained": str(tiny_gpt2)}) == "causal"
    assert bias_requests.model_backend({"pretrained": str(tiny_seq2seq)}) == "seq2seq"
    assert bias_requests.model_backend({"pretrained": str(tiny_gpt2), "backend": "seq2seq"}) == "seq2seq"
    assert bias_requests.model_backend({}) == "causal"
    with pytest.raises(bias_requests.TokenizerNotGiven, match="--model_args pretrained=") as caught:
        bias_requests.model_tokenizer({"data_dir": "x"})
    assert "\n" not in str(caught.value)
