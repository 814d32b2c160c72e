"""The tiny offline checkpoints load through the same code paths as real models."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from compress.common import tiny_models


def test_offline_switches_are_on():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_tiny_gpt2_loads_and_generates(tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert model.config.model_type == "gpt2" and model.config.n_layer == 4
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id < model.config.vocab_size
    # The tokenizer is a real BPE: common corpus words are single tokens, unseen words are split.
    assert tok.tokenize(" the") == ["Ġthe"]
    assert len(tok.tokenize(" zyzzyva")) > 1
    ids = tok("The nurse", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape == (1, ids.shape[1] + 5)


def test_tiny_seq2seq_loads_and_scores(tiny_seq2seq):
    tok = AutoTokenizer.from_pretrained(tiny_seq2seq)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq)
    assert model.config.model_type == "blenderbot" and model.config.is_encoder_decoder
    enc = tok(["The doctor"], return_tensors="pt")
    labels = tok([" told the nurse"], return_tensors="pt").input_ids
    loss = model(**enc, labels=labels).loss
    assert torch.isfinite(loss) and loss > 0


def test_factory_builds_other_shapes_once(tiny_checkpoint):
    first = tiny_checkpoint("gpt2", n_layer=2, n_head=2)
    assert tiny_checkpoint("gpt2", n_layer=2, n_head=2) == first
    config = json.loads((first / "config.json").read_text())
    assert (config["n_layer"], config["n_head"]) == (2, 2)


def test_tiny_detoxify_scores_through_detoxify(tiny_detoxify):
    from detoxify import Detoxify

    scorer = Detoxify(checkpoint=str(tiny_detoxify), huggingface_config_path=str(tiny_detoxify.parent))
    scores = scorer.predict(["you are a stupid idiot", "the weather was cold and the river was frozen"])
    assert set(scores) == {"toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"}
    insult, neutral = scores["toxicity"]
    # The fitted tiny classifier separates the corpus's insults from plain text, as a real one would.
    assert insult > 0.5 > neutral


def test_detoxify_checkpoint_layout(tiny_detoxify):
    loaded = torch.load(tiny_detoxify, weights_only=False)
    assert set(loaded) == {"config", "state_dict"}
    assert loaded["config"]["dataset"]["args"]["classes"] == tiny_models.TOXICITY_CLASSES


def test_lm_eval_hf_runs_a_builtin_loglikelihood_task(tiny_gpt2, tmp_path):
    """lm-eval's own `lambada_openai` task config, pointed at a local file instead of the hub."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    docs = tmp_path / "lambada.jsonl"
    lines = tiny_models.corpus_lines()[:6]
    docs.write_text("".join(json.dumps({"text": line.rstrip(".")}) + "\n" for line in lines))
    manager = TaskManager()
    builtin = yaml.safe_load(manager.task_index["lambada_openai"].yaml_path.read_text())
    task = {**builtin, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(docs)}}}
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_gpt2},dtype=float32",
                                      tasks=[task], task_manager=manager, batch_size=4, device="cpu",
                                      bootstrap_iters=0)
    metrics = results["results"]["lambada_openai"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert metrics["perplexity,none"] > 1.0
    assert len(results["samples"]["lambada_openai"]) == len(lines)


def test_real_gpt2_tokenizer_loads(gpt2_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    assert tok("Hello").input_ids == [15496]
    assert tok.eos_token_id == 50256


@pytest.mark.parametrize("kind", ["gpt2", "seq2seq"])
def test_tokenizer_is_byte_level_and_lossless(tiny_checkpoint, kind):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint(kind))
    text = "Déjà vu — naïve café, 100% ✓"
    assert tok.decode(tok(text).input_ids) == text
