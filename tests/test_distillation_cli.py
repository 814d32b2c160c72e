"""End to end through `compress/distill.py` on the tiny GPT-2: training, output, lm-eval, resuming, errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.common import tiny_models
from compress.common.arguments import parse_config_and_flags
from compress.common.lm_data import DataArguments
from compress.distill import main
from compress.distillation.config import DistillationConfig, StudentArguments
from compress.distillation.trainer import DistillationTrainer

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"teacher", "student_layers", "kept_layers", "init_from_teacher", "teacher_parameters",
                "student_parameters", "eval_loss", "perplexity"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill-data") / "train.txt"
    path.write_text("\n".join(tiny_models.corpus_lines() * 8) + "\n")
    return path


def _flags(teacher, train_file, output_dir, **overrides):
    """A quick CPU run: the tiny teacher, a local text file, small blocks, few steps."""
    flags = {"teacher_name_or_path": teacher, "student_layers": 2, "train_file": train_file, "block_size": 32,
             "output_dir": output_dir, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
             "max_steps": 8, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "use_cpu": "true",
             "report_to": "none", "disable_tqdm": "true", "seed": 0}
    flags.update(overrides)
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def distilled(tiny_gpt2, train_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    summary = main(_flags(tiny_gpt2, train_file, out, max_steps=40, eval_strategy="steps", eval_steps=20,
                          save_strategy="steps", save_steps=20, eval_on_start="true", logging_steps=10,
                          load_best_model_at_end="true"))
    return out, summary


@pytest.mark.slow
def test_short_run_lowers_validation_loss(distilled):
    out, summary = distilled
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert evals[0]["step"] == 0 and len(evals) >= 3
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.3
    assert all(entry["eval_perplexity"] == pytest.approx(2.718281828 ** entry["eval_loss"], rel=1e-6)
               for entry in evals)
    trained = [entry for entry in history if "loss_kd" in entry]
    assert trained and all({"loss", "loss_kd", "loss_ce"} <= entry.keys() for entry in trained)


@pytest.mark.slow
def test_output_is_a_standard_checkpoint_with_a_summary(distilled, tiny_gpt2):
    out, summary = distilled
    written = json.loads((out / "distillation.json").read_text())
    assert SUMMARY_KEYS <= written.keys()
    assert written == json.loads(json.dumps(summary))
    assert written["kept_layers"] == [0, 3] and written["init_from_teacher"] is True
    assert written["student_layers"] == 2 and written["teacher"] == str(tiny_gpt2)
    assert written["student_parameters"] < written["teacher_parameters"]
    assert written["perplexity"] == pytest.approx(2.718281828 ** written["eval_loss"], rel=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 2
    assert sum(p.numel() for p in model.parameters()) == written["student_parameters"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_gpt2).get_vocab()
    # The saved weights are the trained student, not the initial copy of the teacher.
    teacher = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert not torch.equal(model.transformer.h[1].attn.c_attn.weight, teacher.transformer.h[3].attn.c_attn.weight)
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_output_loads_and_evaluates_in_lm_eval(distilled, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out, _ = distilled
    docs = tmp_path / "docs.jsonl"
    lines = tiny_models.corpus_lines()[:6]
    docs.write_text("".join(json.dumps({"context": line.rsplit(" ", 2)[0], "choices": [" " + " ".join(
        line.rsplit(" ", 2)[1:]), " the the"], "label": 0}) + "\n" for line in lines))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "student_smoke.yaml").write_text(
        "task: distill_student_smoke\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {docs}\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{{{context}}}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    tasks = TaskManager(include_path=tmp_path / "tasks")
    results = simple_evaluate(model="hf", model_args=f"pretrained={out},device=cpu,dtype=float32",
                              tasks=["distill_student_smoke"], task_manager=tasks, batch_size=4, log_samples=True)
    assert 0.0 <= results["results"]["distill_student_smoke"]["acc,none"] <= 1.0
    samples = results["samples"]["distill_student_smoke"]
    assert len(samples) == 6 and all(len(s["resps"]) == 2 for s in samples)


@pytest.mark.slow
def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tiny_gpt2, train_file, tmp_path, monkeypatch):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    main(_flags(tiny_gpt2, train_file, full, save_strategy="steps", save_steps=4))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")  # as if the run had stopped at step 4
    training_steps = []
    compute_loss = DistillationTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        training_steps.append(model.training)
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", counting)
    main(_flags(tiny_gpt2, train_file, resumed, save_strategy="steps", save_steps=4, resume_from_checkpoint="auto"))
    assert sum(training_steps) == 4  # it continued from step 4 rather than starting again

    def losses(folder):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    uninterrupted, continued = losses(full), losses(resumed)
    assert sorted(uninterrupted) == list(range(1, 9))
    for step in range(5, 9):
        assert continued[step] == pytest.approx(uninterrupted[step], rel=1e-5), step
    final_full, final_resumed = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key, value in final_full.items():
        assert torch.allclose(value, final_resumed[key], atol=1e-6), key


def _error(argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    message = str(info.value)
    assert "\n" not in message and message.startswith("error:")
    return message


def test_bad_input_is_a_one_line_error(tiny_gpt2, train_file, tmp_path):
    out = tmp_path / "out"
    assert "cannot be deeper than the teacher" in _error(_flags(tiny_gpt2, train_file, out, student_layers=5))
    assert "layer index 7 is out of range" in _error(_flags(tiny_gpt2, train_file, out, layer_selection="0,7"))
    other = tmp_path / "other-tokenizer"
    tiny_models.build_tokenizer(other, vocab_size=300)
    assert "differs from the teacher's" in _error(_flags(tiny_gpt2, train_file, out, tokenizer_name=other))
    config = tmp_path / "typo.yaml"
    config.write_text("student_layer: 2\n")
    assert "unknown config key(s): student_layer" in _error([config, *_flags(tiny_gpt2, train_file, out)])
    no_text = tmp_path / "docs.jsonl"
    no_text.write_text("".join(json.dumps({"body": line}) + "\n" for line in tiny_models.corpus_lines()))
    assert "no text column 'text'" in _error(_flags(tiny_gpt2, no_text, out))
    assert "could not load teacher" in _error(_flags(tmp_path / "missing", train_file, out))
    assert "exceeds the teacher's 128 positions" in _error(_flags(tiny_gpt2, train_file, out, block_size=256))
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("name", "layers", "from_teacher"), [
    ("A", 4, True), ("B", 6, True), ("Bnot", 6, False), ("C", 8, True), ("D", 10, True), ("Dnot", 10, False)])
def test_study_configs_describe_the_papers_students(name, layers, from_teacher):
    student, data, config = parse_config_and_flags(
        (StudentArguments, DataArguments, DistillationConfig),
        [str(REPO / "trainer_configs" / "distill" / f"{name}.yaml"), "--use_cpu", "true"])
    assert (student.student_layers, student.init_from_teacher) == (layers, from_teacher)
    assert student.teacher_name_or_path == "gpt2" and data.dataset_name == "Skylion007/openwebtext"
    assert data.dataset_fraction == 0.01 and config.num_train_epochs == 3
    assert config.load_best_model_at_end and config.metric_for_best_model == "eval_loss"
    assert (config.temperature, config.alpha_kd, config.alpha_ce) == (2.0, 0.5, 0.5)
    assert Path(config.output_dir).name == name


def test_explicit_layer_list_from_yaml_or_flag(tmp_path):
    config = tmp_path / "explicit.yaml"
    config.write_text("student_layers: 3\nlayer_selection: [0, 5, 11]\nuse_cpu: true\ntrain_file: t.txt\n")
    arguments = (StudentArguments, DataArguments, DistillationConfig)
    assert parse_config_and_flags(arguments, [str(config)])[0].layer_selection == [0, 5, 11]
    flagged = parse_config_and_flags(arguments, [str(config), "--layer_selection", "1,2,3"])
    assert flagged[0].layer_selection == [1, 2, 3]
    with pytest.raises(SystemExit, match="layer_selection must be one of"):
        parse_config_and_flags(arguments, [str(config), "--layer_selection", "middle"])


SAVE_LOGGER = """\
import os
if os.environ.get("COMPFAIR_SAVE_LOG"):  # the test's record of which process writes which weights file
    import safetensors.torch as _st
    _save_file = _st.save_file

    def save_file(tensors, filename, *args, **kwargs):
        with open(os.environ["COMPFAIR_SAVE_LOG"], "a") as log:
            log.write(f"{os.environ.get('RANK', 'none')} {os.path.basename(str(filename))}\\n")
        return _save_file(tensors, filename, *args, **kwargs)

    _st.save_file = save_file
"""


@pytest.mark.slow
def test_two_process_cpu_launch_saves_one_model(tiny_gpt2, train_file, tmp_path):
    # A teacher without dropout: the two-process and the one-process runs then take the same steps.
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_gpt2, teacher)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                     "attn_pdrop": 0.0}))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SAVE_LOGGER)
    save_log = tmp_path / "saves.log"
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMPFAIR_SAVE_LOG": str(save_log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
    # `--multi_gpu` selects accelerate's torchrun launcher; with `--use_cpu true` the processes use gloo on CPU.
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "compress" / "distill.py"), *_flags(teacher, train_file, out, max_steps=3,
                                                              per_device_train_batch_size=4)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    # both ranks ran, and only rank 0 wrote the weights
    assert save_log.read_text().splitlines() == ["0 model.safetensors"]
    summary = json.loads((out / "distillation.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    # Two processes of 4 blocks per step: 3 steps cover 24 of the training blocks.
    assert state["global_step"] == 3
    assert state["epoch"] == pytest.approx(3 * 4 * 2 / summary["train_blocks"], rel=0.1)
    assert AutoModelForCausalLM.from_pretrained(out).config.n_layer == 2
    # One process with the same 8 blocks per step trains the same weights
    single = tmp_path / "single"
    main(_flags(teacher, train_file, single, max_steps=3, per_device_train_batch_size=8))
    two, one = load_file(out / "model.safetensors"), load_file(single / "model.safetensors")
    initial = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    assert set(two) == set(one)
    assert not torch.allclose(two["transformer.h.1.attn.c_attn.weight"], initial["transformer.h.3.attn.c_attn.weight"])
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
