"""`compress/prune.py CONFIG.yaml` end to end on tiny GPT-2s: counts, pruning.json, saved forms in lm-eval,
resuming, stop options, LoRA recovery, and one-line errors for bad configs."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress import prune
from compress.common import tiny_models
from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments, build_lm_datasets
from compress.pruning.config import PruningConfig
from compress.pruning.head_gates import HeadGates
from compress.pruning.trainer import PROGRESS_FILE, HeadPruningTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "trainer_configs" / "prune"

RECORD_KEYS = {"heads_per_iteration", "heads_per_layer_per_iteration", "kept_heads_per_iteration",
               "pruned_heads_per_iteration", "importance_per_iteration", "perplexity_per_iteration", "num_samples",
               "data_subset", "parameter_count", "speedup", "stop_reason", "saved_forms", "heads_per_layer"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(tiny_models.corpus_lines() * 6) + "\n")
    return path


def _config(tmp_path, model, text, **fields):
    settings = {"model_name_or_path": str(model), "train_file": str(text), "block_size": 32,
                "num_samples": 16, "per_device_eval_batch_size": 8, "disable_tqdm": True,
                "output_dir": str(tmp_path / "pruned"), **fields}
    path = tmp_path / "prune.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


@pytest.fixture(scope="module")
def gpt2_12x12(tiny_checkpoint):
    return tiny_checkpoint("gpt2", n_layer=12, n_head=12, n_embd=48)


@pytest.fixture(scope="module")
def pruned_12x12(tmp_path_factory, gpt2_12x12, train_file):
    tmp_path = tmp_path_factory.mktemp("prune12")
    record = prune.main([str(_config(tmp_path, gpt2_12x12, train_file)), "--iterations", "3"])
    return tmp_path / "pruned", record


@pytest.mark.slow
def test_three_iterations_at_five_percent_leave_122_of_144_heads(pruned_12x12):
    out, returned = pruned_12x12
    record = json.loads((out / "pruning.json").read_text())
    assert RECORD_KEYS <= set(record)
    assert record["heads_per_iteration"] == [144, 136, 129, 122]
    assert [sum(layer) for layer in record["heads_per_layer_per_iteration"]] == [144, 136, 129, 122]
    assert [len(p) for p in record["pruned_heads_per_iteration"]] == [0, 8, 7, 7]
    kept = record["kept_heads_per_iteration"]
    assert all(len(heads) >= 1 for iteration in kept for heads in iteration)
    assert record["heads_per_layer"] == [len(heads) for heads in kept[-1]]
    for before, after, pruned in zip(kept, kept[1:], record["pruned_heads_per_iteration"][1:]):
        removed = {(layer, h) for layer in range(12) for h in set(before[layer]) - set(after[layer])}
        assert removed == {tuple(p) for p in pruned}
    importance = record["importance_per_iteration"]
    assert importance[0] is None and len(importance) == 4
    assert all(len(scores) == 12 and len(scores[0]) == 12 for scores in importance[1:])
    # Each iteration drops the least important heads still in play.
    for scores, before, pruned in zip(importance[1:], kept, record["pruned_heads_per_iteration"][1:]):
        alive = sorted(scores[layer][h] for layer in range(12) for h in before[layer])
        assert max(scores[layer][h] for layer, h in pruned) <= alive[len(pruned) - 1] + 1e-12
    assert len(record["perplexity_per_iteration"]) == 4 and all(p > 1 for p in record["perplexity_per_iteration"])
    assert record["num_samples"] == record["data_subset"]["num_samples"] == 16
    assert record["data_subset"]["train_file"].endswith("train.txt") and record["data_subset"]["importance_tokens"] > 0
    head_params = 4 * 4 * 48 + 3 * 4  # q, k, v columns + c_proj rows, and q, k, v biases, of a 4-wide head
    assert record["parameter_count"]["unpruned"] - record["parameter_count"]["pruned"] == 22 * head_params
    assert record["speedup"]["measured"] > 0 and record["speedup"]["predicted_from_flops"] > 1
    assert record["stop_reason"].startswith("iterations")
    assert returned["heads_per_iteration"] == record["heads_per_iteration"]
    assert not (out / PROGRESS_FILE).exists()


@pytest.mark.slow
def test_perplexity_is_the_exponent_of_the_mean_validation_token_loss(pruned_12x12, gpt2_12x12, train_file):
    out, record = pruned_12x12
    tokenizer = AutoTokenizer.from_pretrained(gpt2_12x12)
    blocks = build_lm_datasets(DataArguments(train_file=str(train_file), block_size=32), tokenizer, seed=42)
    ids = torch.tensor(blocks["validation"]["input_ids"])
    with torch.no_grad():
        unpruned = AutoModelForCausalLM.from_pretrained(gpt2_12x12)(input_ids=ids, labels=ids).loss
        pruned = _in_memory_pruned(gpt2_12x12, record)(input_ids=ids, labels=ids).loss
    assert record["perplexity_per_iteration"][0] == pytest.approx(math.exp(unpruned), rel=1e-5)
    assert record["perplexity_per_iteration"][-1] == pytest.approx(math.exp(pruned), rel=1e-5)


def test_study_configs_differ_only_in_the_subset_size():
    parsed = {}
    for size in (256, 1280, 2560, 5120, 12800):
        config, data = parse_config_and_flags((PruningConfig, DataArguments),
                                              [str(CONFIGS / f"wikitext_{size}.yaml")])
        assert (config.num_samples, config.output_dir) == (size, f"runs/pruned/wikitext_{size}")
        assert (data.dataset_name, data.dataset_config_name) == ("Salesforce/wikitext", "wikitext-103-raw-v1")
        assert (config.model_name_or_path, config.prune_fraction, config.iterations) == ("gpt2", 0.05, 3)
        parsed[size] = {**config.to_dict(), **vars(data), "num_samples": None, "output_dir": None,
                        "logging_dir": None}
    assert all(settings == parsed[256] for settings in parsed.values())


def _in_memory_pruned(original, record):
    """The original model with the recorded mask applied by gates: the pruned model, rebuilt independently."""
    model = AutoModelForCausalLM.from_pretrained(original).eval()
    mask = torch.zeros(12, 12)
    for layer, heads in enumerate(record["kept_heads_per_iteration"][-1]):
        mask[layer, heads] = 1
    HeadGates(model).set_mask(mask)
    return model


@pytest.mark.slow
def test_saved_forms_give_the_in_memory_pruned_models_outputs_in_lm_eval(pruned_12x12, gpt2_12x12):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    out, _ = pruned_12x12
    record = json.loads((out / "pruning.json").read_text())
    scored = [("The nurse helped the patient", " because he was in pain"), ("The weather was", " cold"),
              ("", "Cats have sharp claws")]
    prompts = ["The teacher praised the", "People in the city"]

    def run(lm):
        likelihoods = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(scored)],
                                       disable_tqdm=True)
        texts = lm.generate_until([Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 8,
                                                                       "do_sample": False}), i)
                                   for i, p in enumerate(prompts)], disable_tqdm=True)
        return [ll for ll, _ in likelihoods], texts

    tokenizer = AutoTokenizer.from_pretrained(out)
    expected_ll, expected_texts = run(HFLM(pretrained=_in_memory_pruned(gpt2_12x12, record), tokenizer=tokenizer,
                                           batch_size=2))
    unpruned_ll, _ = run(HFLM(pretrained=str(gpt2_12x12), device="cpu", batch_size=2))
    assert max(abs(a - b) for a, b in zip(expected_ll, unpruned_ll)) > 1e-4  # pruning changed the model
    for folder, remote in ((out, False), (out / "compact", True)):
        lm = HFLM(pretrained=str(folder), device="cpu", batch_size=2, trust_remote_code=remote)
        likelihoods, texts = run(lm)
        assert likelihoods == pytest.approx(expected_ll, abs=1e-4)
        assert texts == expected_texts
    assert type(HFLM(pretrained=str(out / "compact"), device="cpu", trust_remote_code=True).model).__name__ \
        == "CompactGPT2LMHeadModel"


@pytest.mark.slow
def test_an_interrupted_run_resumes_after_its_last_iteration(tmp_path, tiny_gpt2, train_file, monkeypatch):
    config = str(_config(tmp_path, tiny_gpt2, train_file, prune_fraction=0.25))

    def crash(self, output_dir=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(HeadPruningTrainer, "save_pruned", crash)
    with pytest.raises(KeyboardInterrupt):
        prune.main([config, "--iterations", "1"])
    progress = tmp_path / "pruned" / PROGRESS_FILE
    interrupted = progress.read_text()
    first = json.loads(interrupted)["record"]
    assert first["heads_per_iteration"] == [16, 12]

    monkeypatch.undo()
    # The real progress file of the interrupted run refuses a rerun that would prune other heads
    for changed in (["--prune_fraction", "0.5"], ["--seed", "7"]):
        with pytest.raises(SystemExit, match="comes from a run with other settings") as refused:
            prune.main([config, "--iterations", "2", *changed])
        assert "\n" not in str(refused.value) and str(progress) in str(refused.value)
        assert progress.read_text() == interrupted and not (tmp_path / "pruned" / "pruning.json").exists()
    passes = []
    original = HeadPruningTrainer.compute_head_importance
    monkeypatch.setattr(HeadPruningTrainer, "compute_head_importance",
                        lambda self, *a: passes.append(1) or original(self, *a))
    record = prune.main([config, "--iterations", "2"])
    assert len(passes) == 1  # only the new iteration estimated importance
    assert record["heads_per_iteration"] == [16, 12, 9]
    assert record["kept_heads_per_iteration"][1] == first["kept_heads_per_iteration"][1]
    assert record["perplexity_per_iteration"][:2] == first["perplexity_per_iteration"]
    assert prune.main([config, "--iterations", "2"]) is None  # complete: nothing left to do


@pytest.mark.slow
def test_target_heads_and_max_perplexity_stop_the_loop(tmp_path, tiny_gpt2, train_file):
    target = _config(tmp_path, tiny_gpt2, train_file, iterations=None, target_heads=10, prune_fraction=0.25,
                     measure_speedup=False, output_dir=str(tmp_path / "target"))
    record = prune.main([str(target)])
    assert record["heads_per_iteration"] == [16, 12, 10] and record["stop_reason"].startswith("target_heads")
    # The random tiny model's perplexity is in the hundreds: the first iteration breaks a ceiling of 1.5.
    record = prune.main([str(_config(tmp_path, tiny_gpt2, train_file)), "--max_perplexity", "1.5",
                         "--output_dir", str(tmp_path / "ceiling")])
    assert record["heads_per_iteration"] == [16] and record["stop_reason"].startswith("max_perplexity")
    assert record["rejected_iteration"]["heads"] == 15 and record["rejected_iteration"]["perplexity"] > 1.5
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "ceiling" / "compact", trust_remote_code=True)
    assert saved.config.heads_per_layer == [4, 4, 4, 4]  # the undone iteration left no trace


@pytest.mark.slow
def test_lora_recovery_is_merged_into_both_saved_forms(tmp_path, tiny_gpt2, train_file):
    record = prune.main([str(_config(tmp_path, tiny_gpt2, train_file)), "--prune_fraction", "0.25",
                         "--iterations", "1", "--lora_recovery", "true", "--max_steps", "3", "--learning_rate",
                         "1e-2", "--per_device_train_batch_size", "4", "--save_strategy", "no",
                         "--measure_speedup", "false"])
    out = tmp_path / "pruned"
    assert record["lora_recovery"]["steps"] == 3 and record["perplexity_after_recovery"] > 1
    original = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    compact = AutoModelForCausalLM.from_pretrained(out / "compact", trust_remote_code=True).eval()
    portable = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name in compact.state_dict())  # merged, not adapters
    assert not torch.allclose(portable.transformer.h[0].mlp.c_fc.weight, original.transformer.h[0].mlp.c_fc.weight)
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(portable(input_ids=ids).logits, compact(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
    for layer, heads in enumerate(record["kept_heads_per_iteration"][-1]):
        proj = portable.transformer.h[layer].attn.c_proj.weight.view(4, 8, 32)
        assert all(not proj[h].any() for h in set(range(4)) - set(heads))  # pruned heads stay zero


@pytest.mark.parametrize("fields, flags, message", [
    ({"prune_fraction": 0}, [], r"prune_fraction must be in \(0, 1\), got 0"),
    ({}, ["--prune_fraction", "1.5"], r"prune_fraction must be in \(0, 1\), got 1.5"),
    ({"iterations": None}, [], "set a stop option"),
    ({"train_file": None}, [], "no data: set dataset_name"),
    ({"train_file": "missing.txt"}, [], "data file missing.txt not found"),
    ({"prune_fractoin": 0.1}, [], r"unknown config key\(s\): prune_fractoin"),
    ({}, ["--bogus", "1"], "not used"),
])
def test_bad_configs_fail_with_one_clear_line(tmp_path, tiny_gpt2, train_file, fields, flags, message):
    with pytest.raises(SystemExit, match=message) as failure:
        prune.main([str(_config(tmp_path, tiny_gpt2, train_file, **fields)), *flags])
    assert "\n" not in str(failure.value)


def test_other_architectures_fail_naming_the_model_type(tmp_path, tiny_seq2seq, train_file):
    with pytest.raises(SystemExit, match="'blenderbot' is not supported yet"):
        prune.main([str(_config(tmp_path, tiny_seq2seq, train_file))])


@pytest.mark.slow
def test_two_processes_prune_the_same_heads_as_one(tmp_path, tiny_gpt2, train_file):
    """The script run as a file by `accelerate launch` (compress/ first on sys.path), data-parallel on
    CPU: 13 importance blocks and 6 validation blocks split unevenly over two processes, and the
    record matches a single process's."""
    import os
    import subprocess
    import sys

    flags = ["--model_name_or_path", str(tiny_gpt2), "--train_file", str(train_file), "--block_size", "32",
             "--num_samples", "13", "--per_device_eval_batch_size", "4", "--prune_fraction", "0.25",
             "--iterations", "2", "--disable_tqdm", "true", "--use_cpu", "true", "--measure_speedup", "false"]
    single = prune.main([*flags, "--output_dir", str(tmp_path / "one")])
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(CONFIGS.parents[1] / "compress" / "prune.py"), *flags, "--output_dir", str(tmp_path / "two")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("heads per iteration: [16, 12, 9]") == 1  # printed by the main process only
    double = json.loads((tmp_path / "two" / "pruning.json").read_text())
    assert double["heads_per_iteration"] == single["heads_per_iteration"] == [16, 12, 9]
    assert double["kept_heads_per_iteration"] == single["kept_heads_per_iteration"]
    assert double["data_subset"]["importance_tokens"] == single["data_subset"]["importance_tokens"] == 13 * 31
    for a, b in zip(double["importance_per_iteration"][1:], single["importance_per_iteration"][1:]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-5)
    assert double["perplexity_per_iteration"] == pytest.approx(single["perplexity_per_iteration"], rel=1e-5)
