"""Bias-targeted head pruning: the bias gradient, the leakage rule, and end-to-end runs on tiny GPT-2 and Llama.

The data are small hand-written fixtures in the official formats (WinoBias `{pro,anti}_stereotyped_type{1,2}.txt.
{dev,test}`, StereoSet's simplified JSON lines); the real files are used where present and skipped where absent.
"""

import csv
import json
import math

import pytest
import torch
from report_fixtures import write_lm_eval_run
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from compress import prune
from compress.common import tiny_models
from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments
from compress.pruning.bias_choice import choose_bias_pairs
from compress.pruning.bias_objective import BiasObjective
from compress.pruning.config import PruningConfig
from compress.pruning.head_gates import HeadGates
from compress.report import cli

OCCUPATIONS = [("developer", "designer"), ("nurse", "patient"), ("mechanic", "customer"), ("secretary", "manager"),
               ("doctor", "receptionist"), ("teacher", "student"), ("lawyer", "clerk"), ("chief", "cook"),
               ("engineer", "librarian"), ("musician", "farmer")]


def _winobias_line(i, a, b, pronoun, split):
    verb = "argued with" if split == "dev" else "called"
    return f"{i} [The {a}] {verb} [the {b}] because [{pronoun}] was late for the meeting."


def write_winobias(folder, shared_sentence=False, dev_is_test=False):
    """Official-format files; pro uses 'he' for even-numbered pairs, 'she' for odd ones, anti the other."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("type1", "type2"):
        for split in ("dev", "test"):
            source = "test" if (dev_is_test and split == "dev") else split
            for side in ("pro", "anti"):
                lines = []
                for i, (a, b) in enumerate(OCCUPATIONS, start=1):
                    he = (i % 2 == 0) == (side == "pro")
                    lines.append(_winobias_line(i, a, b, "he" if he else "she", source))
                if shared_sentence and split == "dev" and kind == "type1":
                    lines[0] = _winobias_line(1, *OCCUPATIONS[0], "he" if side == "anti" else "she", "test")
                (folder / f"{side}_stereotyped_{kind}.txt.{split}").write_text("\n".join(lines) + "\n")
    return folder


def write_stereoset(path, extra_rows=()):
    rows = []
    for target, domain in (("nurse", "profession"), ("mechanic", "profession"), ("mother", "gender"),
                           ("engineer", "profession"), ("grandfather", "gender"), ("teacher", "profession")):
        for adjective, anti, unrelated in (("kind", "rude", "blue"), ("careful", "careless", "tall")):
            rows.append({"type": "intrasentence", "target": target, "bias_type": domain,
                         "context": f"The {target} was BLANK.", "stereotype": f"The {target} was {adjective}.",
                         "anti-stereotype": f"The {target} was {anti}.", "unrelated": f"The {target} was {unrelated}."})
    rows += list(extra_rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def bias_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias")
    return {"winobias": write_winobias(root / "winobias"), "stereoset": write_stereoset(root / "stereoset.jsonl"),
            "root": root}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(tiny_models.corpus_lines() * 6) + "\n")
    return path


def _settings(tmp_path, model, text, **fields):
    return {"model_name_or_path": str(model), "train_file": str(text), "block_size": 32, "num_samples": 8,
            "per_device_eval_batch_size": 8, "disable_tqdm": True, "report_to": "none", "measure_speedup": False,
            "save_compact": False, "output_dir": str(tmp_path / "pruned"), **fields}


def _config(tmp_path, model, text, **fields) -> PruningConfig:
    argv = []
    for key, value in _settings(tmp_path, model, text, **fields).items():
        argv += [f"--{key}", *map(str, value)] if isinstance(value, list) else [f"--{key}", str(value)]
    return parse_config_and_flags((PruningConfig, DataArguments), argv)[0]


def _error_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("error: ")
    return message


# ---------------------------------------------------------------- the gradient


def _loglik(model, tokenizer, sentence) -> float:
    """(log p(sentence | prefix token), tokens): one sentence at a time (no padding), each token's log-softmax."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [prefix] + tokenizer.encode(sentence, add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))), len(ids) - 1


def _gap(model, tokenizer, source) -> float:
    """b = mean over pairs of s(favoured) - s(disfavoured), transcribed from the definition."""
    gaps = []
    for fav, dis in zip(source.favoured, source.disfavoured, strict=True):
        (lf, nf), (ld, nd) = _loglik(model, tokenizer, fav), _loglik(model, tokenizer, dis)
        gaps.append(lf - ld if source.score == "total" else lf / nf - ld / nd)
    return sum(gaps) / len(gaps)


def _rms_norm_in_input_precision(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("dataset", ["winobias", "stereoset"])
def test_bias_gradient_equals_a_finite_difference(tiny_checkpoint, bias_files, train_file, tmp_path, monkeypatch,
                                                  kind, dataset):
    folder = tiny_checkpoint(kind)
    # Llama's RMSNorm computes in float32 even in a float64 model, which leaves the measure smooth only to ~1e-7
    # and the finite difference noisy; here it computes in the input's precision.
    monkeypatch.setattr(LlamaRMSNorm, "forward", _rms_norm_in_input_precision)
    config = _config(tmp_path, folder, train_file, importance="bias", bias_data=[str(bias_files[dataset])],
                     iterations=1, bias_max_pairs=4)
    sources = choose_bias_pairs(config)
    assert len(sources) == 1 and len(sources[0].favoured) == 4
    # SDPA keeps float64 (Llama's eager softmax computes in float32).
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").double()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    objective = BiasObjective(sources, tokenizer, batch_size=3)  # batches of mixed lengths: padding is exercised
    gates = HeadGates(model)
    gates.values[0, 1] = 0.0  # a masked unit: the gradient is still taken at the current gates
    (evaluation,) = objective.evaluate(model, gates, gradients=True)
    gradient = evaluation.gap_gradient()
    assert math.isclose(evaluation.gap, _gap(model, tokenizer, sources[0]), rel_tol=1e-9, abs_tol=1e-9)
    eps = 1e-4
    for layer, unit in [(0, 0), (1, gates.num_units - 1), (0, 1)]:
        values = gates.values.clone()
        gates.values[layer, unit] = values[layer, unit] + eps
        up = _gap(model, tokenizer, sources[0])
        gates.values[layer, unit] = values[layer, unit] - eps
        down = _gap(model, tokenizer, sources[0])
        gates.values.copy_(values)
        finite = (up - down) / (2 * eps)
        assert abs(finite) > 1e-6, "the gate must move the measure for the comparison to mean anything"
        assert math.isclose(float(gradient[layer, unit]), finite, rel_tol=1e-5, abs_tol=1e-9)
    gates.remove()


# ---------------------------------------------------------------- the leakage rule


def test_choosing_on_the_evaluated_split_is_refused(bias_files, tiny_gpt2, train_file, tmp_path):
    config = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(bias_files["winobias"])],
                     bias_split="test", iterations=1)
    with pytest.raises(SystemExit) as excinfo:
        choose_bias_pairs(config)
    assert "bias_split test" in _error_line(excinfo)


def test_a_shared_sentence_is_refused_or_left_out(tmp_path, tiny_gpt2, train_file):
    folder = write_winobias(tmp_path / "winobias", shared_sentence=True)
    refuse = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(folder)],
                     bias_overlap="refuse", iterations=1)
    with pytest.raises(SystemExit) as excinfo:
        choose_bias_pairs(refuse)
    assert "1 choosing pairs share a sentence" in _error_line(excinfo)
    leave_out = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(folder)], iterations=1)
    (source,) = choose_bias_pairs(leave_out)
    # By hand: type1_dev pair 1 was rewritten to a test sentence; 20 dev pairs, 19 left.
    assert source.description["left_out_sharing_a_sentence"] == [{"subset": "type1_dev", "index": 1}]
    assert len(source.favoured) == 19
    assert all("argued with" in s for s in source.favoured + source.disfavoured)


def test_choosing_data_that_is_the_evaluation_data_is_refused(tmp_path, tiny_gpt2, train_file):
    folder = write_winobias(tmp_path / "winobias", dev_is_test=True)
    config = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(folder)], iterations=1)
    with pytest.raises(SystemExit) as excinfo:
        choose_bias_pairs(config)
    assert "every choosing pair shares a sentence" in _error_line(excinfo)


def test_stereoset_choosing_terms_are_held_out_and_an_evaluated_one_is_refused(bias_files, tmp_path, tiny_gpt2,
                                                                               train_file):
    config = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(bias_files["stereoset"])],
                     iterations=1)
    (source,) = choose_bias_pairs(config)
    chosen, held_out = source.description["choosing_targets"], source.description["held_out_targets"]
    assert len(chosen) == 3 and len(held_out) == 3 and not set(chosen) & set(held_out)
    assert set(chosen) | set(held_out) == {"nurse", "mechanic", "mother", "engineer", "grandfather", "teacher"}
    assert {t.lower() for t in source.targets} == set(chosen) and len(source.favoured) == 6
    # An evaluation file of the held-out terms is accepted; one that also scores a choosing term, written in
    # another case and with spaces around it (identity is after normalisation), is refused.
    def evaluation_file(name, terms):
        rows = [{"type": "intersentence", "target": term, "bias_type": "profession", "context": f"{term} {i}.",
                 "stereotype": f"a {i}.", "anti-stereotype": f"b {i}.", "unrelated": f"c {i}."}
                for i, term in enumerate(terms)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    clean = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(bias_files["stereoset"])],
                    bias_eval_data=[evaluation_file("clean.jsonl", held_out)], iterations=1)
    assert choose_bias_pairs(clean)[0].description["evaluation"]["targets"] == 3
    leaky = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(bias_files["stereoset"])],
                    bias_eval_data=[evaluation_file("leaky.jsonl", [*held_out, f" {chosen[0].upper()} "])],
                    iterations=1)
    with pytest.raises(SystemExit) as excinfo:
        choose_bias_pairs(leaky)
    assert "1 choosing target terms are also evaluated" in _error_line(excinfo)


def test_real_winobias_dev_shares_sentences_with_test(shared_data, tmp_path, tiny_gpt2, train_file):
    folder = shared_data("winobias")
    refuse = _config(tmp_path, tiny_gpt2, train_file, importance="bias", bias_data=[str(folder)],
                     bias_overlap="refuse", iterations=1)
    with pytest.raises(SystemExit) as excinfo:
        choose_bias_pairs(refuse)
    _error_line(excinfo)
    (source,) = choose_bias_pairs(_config(tmp_path, tiny_gpt2, train_file, importance="bias",
                                          bias_data=[str(folder)], iterations=1))
    test_sentences = set()
    for kind in ("type1", "type2"):
        for side in ("pro", "anti"):
            for line in (folder / f"{side}_stereotyped_{kind}.txt.test").read_text().splitlines():
                if line.strip():  # "<number> <sentence with [mentions]>"
                    sentence = line.split(" ", 1)[1].replace("[", "").replace("]", "")
                    test_sentences.add(" ".join(sentence.lower().split()))
    chosen = {" ".join(s.lower().split()) for s in source.favoured + source.disfavoured}
    assert source.description["left_out_sharing_a_sentence"] and not chosen & test_sentences


# ---------------------------------------------------------------- end to end


def _run(tmp_path, model, text, name, **fields):
    settings = _settings(tmp_path, model, text, output_dir=str(tmp_path / name), **fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    prune.main([str(path)])
    return json.loads((tmp_path / name / "pruning.json").read_text())


@pytest.mark.parametrize("kind, fields", [
    ("gpt2", {"prune_fraction": 0.1, "iterations": 2}),
    ("llama", {"prune_fraction": 0.125, "iterations": 2, "unit": "query_head"}),
])
def test_bias_targeted_run_lowers_the_bias_measure_more_than_the_loss_targeted_run(
        tiny_checkpoint, bias_files, train_file, tmp_path, kind, fields):
    folder = tiny_checkpoint(kind)
    common = {"bias_data": [str(bias_files["winobias"])], **fields}
    loss = _run(tmp_path, folder, train_file, "loss", importance="loss", **common)
    bias = _run(tmp_path, folder, train_file, "bias", importance="bias", **common)
    assert loss["importance"] == "loss" and bias["importance"] == "bias"
    assert loss["heads_per_iteration"] == bias["heads_per_iteration"]
    assert bias["heads_per_iteration"][-1] < bias["heads_per_iteration"][0]
    assert loss["pruned_units_per_iteration"] != bias["pruned_units_per_iteration"]
    (source,) = bias["bias_data"]["sources"]
    assert source["dataset"] == "winobias" and source["split"] == "dev" and source["pairs"] == 20
    assert source["subsets"] == ["type1_dev", "type2_dev"] and len(source["files"]) == 4
    assert source["evaluation"]["subsets"] == ["type1_test", "type2_test"]
    assert len(bias["bias_measure_per_iteration"]) == len(bias["perplexity_per_iteration"]) == 3
    start, end_loss, end_bias = (loss["bias_measure_per_iteration"][0]["objective"],
                                 loss["bias_measure_per_iteration"][-1]["objective"],
                                 bias["bias_measure_per_iteration"][-1]["objective"])
    assert bias["bias_measure_per_iteration"][0]["objective"] == pytest.approx(start)
    assert end_bias < start and end_bias < end_loss
    # The recorded measure of the saved model, recomputed from its weights by the definition.
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "bias").double()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bias")
    config = _config(tmp_path, folder, train_file, **common)
    # (float32 sentence log-likelihoods of ~50 nats agree to ~1e-5)
    assert abs(_gap(pruned, tokenizer, choose_bias_pairs(config)[0])) == pytest.approx(end_bias, abs=5e-5)


# ---------------------------------------------------------------- the report


def test_report_marks_models_evaluated_on_their_choosing_data(tmp_path):
    wino = {"dataset": "winobias", "subsets": ["type1_dev", "type2_dev"], "pairs": 700}
    stereo = {"dataset": "stereoset", "split": "intrasentence", "choosing_targets": ["nurse", "mother"], "pairs": 9}
    records = {"teacher": None,
               "by_loss": {"importance": "loss", "bias_data": {"sources": [wino]}},  # measured, not chosen, on dev
               "by_winobias": {"importance": "bias", "bias_data": {"sources": [wino]}},
               "by_stereoset": {"importance": "bias", "bias_data": {"sources": [stereo]}}}
    tasks = {"compfair_winobias_type1_dev": {"anti_rate": [0.0, 100.0, 100.0]},
             "compfair_winobias_type1_test": {"anti_rate": [100.0, 0.0, 0.0]},
             "compfair_stereoset_intrasentence": {"stereotype_count": [1.0, 0.0, 1.0]}}
    teacher = None
    for name, extra in records.items():
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"n_layer": 2, "n_head": 4}))
        if extra is not None:
            (folder / "pruning.json").write_text(json.dumps({"model_name_or_path": teacher, "num_samples": 8,
                                                             "heads_per_iteration": [8, 7], **extra}))
        teacher = teacher or str(folder)
        write_lm_eval_run(tmp_path / "eval" / name, str(folder), tasks, num_parameters=100)
    out = tmp_path / "report"
    assert cli.main([str(p) for p in sorted((tmp_path / "eval").iterdir())] + ["--out", str(out),
                                                                                "--resamples", "200"]) == 0
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert rows["by_winobias"]["evaluated_on_choosing_data"] == "compfair_winobias_type1_dev"
    assert rows["by_stereoset"]["evaluated_on_choosing_data"] == "compfair_stereoset_intrasentence"
    assert rows["by_loss"]["evaluated_on_choosing_data"] == rows["teacher"]["evaluated_on_choosing_data"] == ""
    assert rows["by_winobias"]["head_importance"] == "bias" and rows["by_loss"]["head_importance"] == "loss"
    assert "type1_dev+type2_dev" in rows["by_winobias"]["bias_chosen_on"]
    markdown = (out / "summary.md").read_text()
    notes = [line for line in markdown.splitlines() if line.startswith("- by_")]
    assert len(notes) == 2 and "2 target terms" in next(n for n in notes if n.startswith("- by_stereoset"))
    assert "| by_winobias † |" in markdown and "| by_loss |" in markdown


def test_bias_importance_without_bias_data_is_a_one_line_error(tmp_path, tiny_gpt2, train_file):
    with pytest.raises(SystemExit) as excinfo:
        _config(tmp_path, tiny_gpt2, train_file, importance="bias", iterations=1)
    assert "importance bias needs bias_data" in _error_line(excinfo)
