"""Layer dropping on tiny GPT-2 and Llama models (and one tiny model of every other supported architecture):
block scores against a computation from `output_hidden_states`, the shortened model against the base model run
block by block by hand with the dropped blocks skipped (with and without the KV cache), the saved checkpoint in
plain transformers and in lm-eval, layer_dropping.json, resuming, LoRA healing, and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress import drop_layers
from compress.common import tiny_models
from compress.common.lm_data import DataArguments, build_lm_datasets
from compress.layer_dropping.importance import accumulate_score_sums, blocks_to_remove, finish_scores
from compress.layer_dropping.removal import drop_blocks
from compress.layer_dropping.trainer import RECORD_FILE
from compress.models.blocks import BLOCK_PATHS, decoder_blocks

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "compress" / "study" / "demo_data"


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(tiny_models.corpus_lines() * 6) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_models.build_tiny_llama(folder, layers=4, hidden_size=32, intermediate_size=64)
    return folder


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_llama):
    return {"gpt2": tiny_checkpoint("gpt2"), "llama": tiny_llama}


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


# ---- block scores ----

def _batches():
    generator = torch.Generator().manual_seed(0)
    first = {"input_ids": torch.randint(0, 500, (3, 12), generator=generator)}
    padded = torch.randint(0, 500, (2, 12), generator=generator)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 7:] = 0  # right padding: this sequence's last real token is at position 6
    return [first, {"input_ids": padded, "attention_mask": mask}]


def _reference_states(folder, batch):
    """output_hidden_states with the final norm replaced by the identity, so the last entry is the last block's
    raw output (the library reports the final-norm output there)."""
    model = _load(folder)
    if model.config.model_type == "gpt2":
        model.transformer.ln_f = nn.Identity()
    else:
        model.model.norm = nn.Identity()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, use_cache=False)
    return [h.double().numpy() for h in out.hidden_states]


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _reference_scores(folder, method, span, positions):
    """The papers' formulas with numpy, token by token."""
    values = None
    for batch in _batches():
        states = _reference_states(folder, batch)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).numpy()
        num_blocks = len(states) - 1
        pairs = ([(s, s + span) for s in range(num_blocks - span + 1)] if method == "angular_distance"
                 else [(i, i + 1) for i in range(num_blocks)])
        values = values or [[] for _ in pairs]
        for b in range(mask.shape[0]):
            real = np.flatnonzero(mask[b])
            tokens = [real[-1]] if positions == "last" else list(real)
            for j, (first, second) in enumerate(pairs):
                for t in tokens:
                    cos = _cos(states[first][b, t], states[second][b, t])
                    values[j].append(np.arccos(np.clip(cos, -1, 1)) / np.pi if method == "angular_distance" else cos)
    means = np.array([np.mean(v) for v in values])
    return means if method == "angular_distance" else 1 - means


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("method, span, positions", [("angular_distance", 2, "last"), ("angular_distance", 1, "last"),
                                                     ("angular_distance", 2, "all"), ("block_influence", 2, "all"),
                                                     ("block_influence", 1, "last")])
def test_scores_equal_the_papers_formulas_on_output_hidden_states(models, kind, method, span, positions):
    folder = models[kind]
    sums, tokens = accumulate_score_sums(_load(folder), _batches(), method, span, positions)
    scores = finish_scores(sums, tokens, method)
    expected = _reference_scores(folder, method, span, positions)
    assert tokens == (3 * 12 + 12 + 7 if positions == "all" else 5)  # padding is never counted
    assert len(scores) == (4 - span + 1 if method == "angular_distance" else 4)
    assert scores.numpy() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if method == "angular_distance":
        start = int(np.argmin(expected))
        assert blocks_to_remove(scores, method, span) == list(range(start, start + span))
    else:
        assert blocks_to_remove(scores, method, span) == sorted(np.argsort(expected, kind="stable")[:span].tolist())


def test_the_last_token_and_all_tokens_give_different_scores(models):
    """The token set is a real choice (Gromov: last token; ShortGPT: every token)."""
    model = _load(models["llama"])
    last = finish_scores(*accumulate_score_sums(model, _batches(), "angular_distance", 1, "last"), "angular_distance")
    every = finish_scores(*accumulate_score_sums(model, _batches(), "angular_distance", 1, "all"), "angular_distance")
    assert not torch.allclose(last, every)


# ---- the shortened model is the base model with those blocks skipped ----

def _causal_mask(length):
    mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None]


@torch.no_grad()
def _skipping_logits(base, input_ids, skip):
    """The base model's forward written out block by block, skipping `skip`: no cache, eager attention."""
    positions = torch.arange(input_ids.shape[1])[None]
    mask = _causal_mask(input_ids.shape[1])
    if base.config.model_type == "gpt2":
        body = base.transformer
        hidden = body.wte(input_ids) + body.wpe(positions)
        for i, block in enumerate(body.h):
            if i not in skip:
                hidden = block(hidden, None, mask, position_ids=positions)
        return base.lm_head(body.ln_f(hidden))
    body = base.model
    hidden = body.embed_tokens(input_ids)
    rotary = body.rotary_emb(hidden, position_ids=positions)
    for i, block in enumerate(body.layers):
        if i not in skip:
            hidden = block(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    return base.lm_head(body.norm(hidden))


def _greedy_by_hand(base, prompt, skip, steps):
    """Greedy decoding recomputing the whole sequence each step: (tokens, per-step next-token logits)."""
    ids, step_logits = prompt, []
    for _ in range(steps):
        logits = _skipping_logits(base, ids, skip)[:, -1]
        step_logits.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids, step_logits


PROMPT = torch.tensor([[5, 17, 42, 99, 7, 230, 11]])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("skip", [[1, 2], [0, 3], [3]])
def test_dropped_model_equals_the_base_run_by_hand_skipping_those_blocks(models, kind, skip):
    base, dropped = _load(models[kind]), _load(models[kind])
    updates = drop_blocks(dropped, skip)
    assert len(decoder_blocks(dropped)) == 4 - len(skip) == updates[next(iter(updates))]
    assert [b.attn.layer_idx if kind == "gpt2" else b.self_attn.layer_idx for b in decoder_blocks(dropped)] \
        == list(range(4 - len(skip)))
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = dropped(input_ids=ids, use_cache=False).logits
    reference = _skipping_logits(base, ids, skip)
    assert not torch.allclose(reference, _skipping_logits(base, ids, []), atol=1e-4)  # the blocks mattered
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-6)

    expected_ids, expected_logits = _greedy_by_hand(base, PROMPT, skip, steps=6)
    for use_cache in (True, False):
        out = dropped.generate(PROMPT, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                               return_dict_in_generate=True, output_logits=True, pad_token_id=0)
        assert out.sequences.tolist() == expected_ids.tolist()
        for got, want in zip(out.logits, expected_logits, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _tiny_config(model_type):
    from transformers import AutoConfig

    common = {"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
              "num_attention_heads": 4, "max_position_embeddings": 64}
    extra = {
        "mistral": {"num_key_value_heads": 2, "sliding_window": 4},
        "qwen2": {"num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
        "qwen3": {"num_key_value_heads": 2, "head_dim": 8, "use_sliding_window": True, "sliding_window": 4,
                  "max_window_layers": 2},
        "gemma2": {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4},
        "gemma3_text": {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4,
                        "layer_types": ["sliding_attention", "full_attention"] * 2},
        "phi3": {"num_key_value_heads": 2},
        "gpt_neox": {},
        "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
        "llama": {"num_key_value_heads": 2},
    }[model_type]
    if model_type == "opt":
        common = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "max_position_embeddings": 64}
    tokens = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    return AutoConfig.for_model(model_type, **common, **tokens, **extra)


class _Skip(nn.Module):
    """Stands in for a block and passes its input through unchanged."""

    def __init__(self, block):
        super().__init__()
        for name in ("attention_type",):
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


OTHER_ARCHITECTURES = sorted(set(BLOCK_PATHS) - {"gpt2"})


@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_every_supported_architecture_drops_blocks_into_a_stock_model(tmp_path, model_type):
    """The saved smaller model reloads as the stock class and computes what the base model computes with the
    dropped blocks passed through (without cache, over a sequence longer than any sliding window), and
    generates the same with the KV cache."""
    torch.manual_seed(0)
    config = _tiny_config(model_type)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    base.save_pretrained(tmp_path / "base")
    skip = [1, 2]
    dropped = AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    drop_blocks(dropped, skip)
    dropped.save_pretrained(tmp_path / "dropped")
    saved = json.loads((tmp_path / "dropped" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    if getattr(config, "layer_types", None):
        assert saved["layer_types"] == [config.layer_types[0], config.layer_types[3]]
        assert "sliding_attention" in config.layer_types and "full_attention" in config.layer_types
    if model_type in ("qwen2", "qwen3"):
        assert saved["max_window_layers"] == 1  # block 0 of the kept (0, 3) is below the old bound of 2
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dropped", attn_implementation="eager").eval()
    assert type(reloaded) is type(base) and len(decoder_blocks(reloaded)) == 2

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    blocks = decoder_blocks(reference)
    for i in skip:
        blocks[i] = _Skip(blocks[i])
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(reloaded(input_ids=ids, use_cache=False).logits, expected, rtol=0, atol=1e-5)
    prompt = ids[:1, :6]
    greedy = prompt
    for _ in range(8):  # past the sliding window of 4
        with torch.no_grad():
            greedy = torch.cat([greedy, reference(input_ids=greedy, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    for model in (reloaded, dropped):  # reloaded blocks are numbered by construction; in memory, by drop_blocks
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        assert cached.tolist() == greedy.tolist()


# ---- the CLI ----

def _config(tmp_path, model, text, **fields):
    settings = {"model_name_or_path": str(model), "train_file": str(text), "block_size": 32, "num_samples": 16,
                "num_blocks_to_drop": 2, "per_device_eval_batch_size": 8, "disable_tqdm": True,
                "report_to": "none", "output_dir": str(tmp_path / "dropped"), **fields}
    path = tmp_path / "drop.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


@pytest.fixture(scope="module")
def dropped_runs(tmp_path_factory, models, train_file):
    runs = {}
    for kind, method in (("gpt2", "angular_distance"), ("llama", "block_influence")):
        tmp_path = tmp_path_factory.mktemp(f"drop-{kind}")
        record = drop_layers.main([str(_config(tmp_path, models[kind], train_file, method=method))])
        runs[kind] = (tmp_path / "dropped", record)
    return runs


def _validation_perplexity(model, folder, train_file, skip):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    blocks = build_lm_datasets(DataArguments(train_file=str(train_file), block_size=32), tokenizer, seed=42)
    ids = torch.tensor(blocks["validation"]["input_ids"])
    logits = _skipping_logits(model, ids, skip)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(loss))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cli_removes_the_chosen_blocks_and_records_the_run(dropped_runs, models, train_file, kind):
    out, returned = dropped_runs[kind]
    record = json.loads((out / RECORD_FILE).read_text())
    assert record == returned
    assert record["num_blocks"] == {"before": 4, "after": 2} and record["num_blocks_to_drop"] == 2
    scores = record["scores"]
    if kind == "gpt2":  # angular distance over spans of 2: three starts, the smallest chosen
        assert record["method"] == "angular_distance" and record["token_positions"] == "last" and len(scores) == 3
        start = scores.index(min(scores))
        assert record["blocks_removed"] == [start, start + 1]
    else:  # Block Influence: the two lowest of four
        assert record["method"] == "block_influence" and record["token_positions"] == "all" and len(scores) == 4
        assert record["blocks_removed"] == sorted(sorted(range(4), key=lambda i: scores[i])[:2])
    assert record["blocks_kept"] == [i for i in range(4) if i not in record["blocks_removed"]]
    calibration = record["calibration"]
    assert calibration["train_file"] == str(train_file) and calibration["num_samples"] == 16
    assert calibration["seed"] == 42 and calibration["block_size"] == 32
    assert calibration["tokens"] == (16 if kind == "gpt2" else 16 * 32)
    assert record["healing"] is None
    base = _load(models[kind])
    assert record["perplexity_before"] == pytest.approx(_validation_perplexity(base, out, train_file, []), rel=1e-5)
    assert record["perplexity_after"] == pytest.approx(
        _validation_perplexity(base, out, train_file, record["blocks_removed"]), rel=1e-5)
    per_block = sum(p.numel() for p in decoder_blocks(base)[0].parameters())
    assert record["parameter_count"]["before"] - record["parameter_count"]["after"] == 2 * per_block
    # The saved checkpoint is the base model with those blocks skipped.
    saved = _load(out)
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits,
                                   _skipping_logits(base, ids, record["blocks_removed"]), rtol=0, atol=1e-6)


def test_a_finished_run_is_not_redone(dropped_runs, models, train_file, tmp_path, capsys):
    out, _ = dropped_runs["gpt2"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    config = _config(tmp_path, models["gpt2"], train_file, output_dir=str(out), method="angular_distance")
    assert drop_layers.main([str(config)]) is None
    assert "complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_the_checkpoint_loads_in_plain_transformers_without_compfair(dropped_runs):
    out, record = dropped_runs["llama"]
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["num_hidden_layers"] == 2
    script = ("import sys; from transformers import AutoModelForCausalLM as A; "
              f"m = A.from_pretrained({str(out)!r}); "
              "assert not any(n == 'compress' or n.startswith('compress.') for n in sys.modules); "
              "print(type(m).__name__, m.config.num_hidden_layers, len(m.model.layers))")
    # -I: isolated mode, neither the working directory nor PYTHON* variables put compfair on the path
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                          cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LlamaForCausalLM", "2", "2"]


@pytest.mark.slow
def test_the_checkpoint_runs_a_compfair_bias_task_in_lm_eval(dropped_runs, models):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out, record = dropped_runs["gpt2"]
    model_args = {"pretrained": str(out)}
    manager = TaskManager(include_path=str(REPO / "lm_eval_tasks"), include_defaults=False,
                          metadata={**model_args, "data_dir": str(DEMO_DATA)})
    results = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=["compfair_winobias_type1_test"],
                                      task_manager=manager, device="cpu", batch_size=8, log_samples=True,
                                      bootstrap_iters=0)
    samples = results["samples"]["compfair_winobias_type1_test"]
    assert samples and results["results"]["compfair_winobias_type1_test"]
    # One logged request, rescored with the base model run by hand without the dropped blocks.
    context, continuation = samples[0]["arguments"][0]
    tokenizer = AutoTokenizer.from_pretrained(out)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else [tokenizer.eos_token_id]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    logprobs = _skipping_logits(_load(models["gpt2"]), ids, record["blocks_removed"]).log_softmax(-1)[0]
    expected = sum(float(logprobs[len(context_ids) - 1 + j, t]) for j, t in enumerate(continuation_ids))
    assert samples[0]["resps"][0][0][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_lora_healing_is_merged_into_the_saved_model(tmp_path, models, train_file):
    record = drop_layers.main([str(_config(tmp_path, models["llama"], train_file)), "--lora_healing", "true",
                               "--max_steps", "3", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4",
                               "--save_strategy", "no"])
    out = tmp_path / "dropped"
    healing = record["healing"]
    assert healing["steps"] == 3 and healing["r"] == 8 and healing["target_modules"] == ["all-linear"]
    assert healing["learning_rate"] == 1e-2 and healing["perplexity_after_healing"] > 1
    assert json.loads((out / RECORD_FILE).read_text())["healing"] == healing
    saved = _load(out)
    assert not any("lora" in name for name in saved.state_dict())  # merged, not adapters
    base = _load(models["llama"])
    kept = record["blocks_kept"]
    for new, old in enumerate(kept):
        assert not torch.equal(decoder_blocks(saved)[new].mlp.down_proj.weight,
                               decoder_blocks(base)[old].mlp.down_proj.weight)  # the healing changed the weights
    assert torch.equal(saved.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not targeted


@pytest.mark.parametrize("fields, flags, message", [
    ({"num_blocks_to_drop": 4}, [], r"num_blocks_to_drop=4, model .* \(4 blocks\): cannot remove 4 of 4 blocks"),
    ({"num_blocks_to_drop": 9}, [], r"cannot remove 9 of 4 blocks"),
    ({"num_blocks_to_drop": 0}, [], "num_blocks_to_drop must be at least 1, got 0"),
    ({}, ["--num_blocks_to_drop", "-1"], "num_blocks_to_drop must be at least 1, got -1"),
    ({"method": "random"}, [], "method must be one of angular_distance, block_influence, got 'random'"),
    ({"token_positions": "first"}, [], "token_positions must be one of auto, last, all"),
    ({"num_blokcs": 2}, [], r"unknown config key\(s\): num_blokcs"),
])
def test_bad_settings_fail_with_one_clear_line(tmp_path, models, train_file, fields, flags, message):
    with pytest.raises(SystemExit, match=message) as failure:
        drop_layers.main([str(_config(tmp_path, models["gpt2"], train_file, **fields)), *flags])
    assert "\n" not in str(failure.value)
    assert not (tmp_path / "dropped").exists()


def test_an_unsupported_architecture_fails_naming_its_type(tmp_path, tiny_seq2seq, train_file):
    with pytest.raises(SystemExit, match="model type 'blenderbot' is not supported") as failure:
        drop_layers.main([str(_config(tmp_path, tiny_seq2seq, train_file))])
    assert "\n" not in str(failure.value)


def test_position_dependent_gpt2_is_refused(tmp_path, models):
    model = _load(models["gpt2"])
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        drop_blocks(model, [1])


def test_study_configs_drop_six_of_gpt2s_twelve_blocks_and_differ_only_in_the_method():
    from compress.common.arguments import parse_config_and_flags
    from compress.layer_dropping.config import LayerDroppingConfig

    parsed = {}
    for method in ("angular_distance", "block_influence"):
        path = REPO / "trainer_configs" / "drop_layers" / f"gpt2_{method}_6.yaml"
        config, data = parse_config_and_flags((LayerDroppingConfig, DataArguments), [str(path)])
        assert (config.model_name_or_path, config.num_blocks_to_drop, config.method) == ("gpt2", 6, method)
        assert config.output_dir == f"runs/dropped/gpt2_{method}_6"
        assert (data.dataset_name, data.dataset_config_name) == ("Salesforce/wikitext", "wikitext-103-raw-v1")
        parsed[method] = {**config.to_dict(), **vars(data), "method": None, "output_dir": None, "logging_dir": None}
    assert parsed["angular_distance"] == parsed["block_influence"]


@pytest.mark.slow
def test_two_processes_choose_the_same_blocks_as_one(tmp_path, models, train_file):
    """The script run as a file by `accelerate launch`, data-parallel on CPU: 13 calibration blocks and the
    validation blocks split unevenly over two processes; scores, blocks and perplexities match one process's."""
    import os

    flags = ["--model_name_or_path", str(models["llama"]), "--train_file", str(train_file), "--block_size", "32",
             "--num_samples", "13", "--per_device_eval_batch_size", "4", "--num_blocks_to_drop", "2",
             "--method", "block_influence", "--disable_tqdm", "true", "--use_cpu", "true", "--report_to", "none"]
    single = drop_layers.main([*flags, "--output_dir", str(tmp_path / "one")])
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "compress" / "drop_layers.py"), *flags, "--output_dir", str(tmp_path / "two")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("removed blocks") == 1  # printed by the main process only
    double = json.loads((tmp_path / "two" / RECORD_FILE).read_text())
    # first, that the two processes really split the calibration blocks rather than each scoring all 13
    shares = double["calibration"]["tokens_per_process"]
    assert single["calibration"]["tokens_per_process"] == [13 * 32]
    assert len(shares) == 2 and all(0 < n < 13 * 32 for n in shares), shares
    assert double["calibration"]["tokens"] == single["calibration"]["tokens"] == 13 * 32
    assert double["scores"] == pytest.approx(single["scores"], rel=1e-9)
    assert double["blocks_removed"] == single["blocks_removed"]
    assert double["perplexity_before"] == pytest.approx(single["perplexity_before"], rel=1e-6)
    assert double["perplexity_after"] == pytest.approx(single["perplexity_after"], rel=1e-6)
