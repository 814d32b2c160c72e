"""The modern study preset (`--study modern`): which models, which baselines, which commands, without running them;
that finished work is skipped; and its scaled-down demo end to end on the tiny GPT-2 teacher."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.study import runner as study

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              "trainer_configs/accelerate/single_gpu.yaml"]
PYTHON = [sys.executable]

# Written out by hand from the issue: half depth, 5% x 3 and a stronger setting, 50% and 2:4, int8/int4/GPTQ.
# name -> (kind, record, script, config, strength flags) for a 24-block teacher.
EXPECTED_24 = {
    "distill_half": ("student", "distillation.json", "compress/distill.py", "trainer_configs/distill/B.yaml",
                     ["--student_layers", "12"]),
    "drop_angular_half": ("dropped", "layer_dropping.json", "compress/drop_layers.py",
                          "trainer_configs/drop_layers/gpt2_angular_distance_6.yaml", ["--num_blocks_to_drop", "12"]),
    "drop_influence_half": ("dropped", "layer_dropping.json", "compress/drop_layers.py",
                            "trainer_configs/drop_layers/gpt2_block_influence_6.yaml", ["--num_blocks_to_drop", "12"]),
    "prune_5pct_x3": ("pruned", "pruning.json", "compress/prune.py", "trainer_configs/prune/wikitext_2560.yaml",
                      ["--prune_fraction", "0.05", "--iterations", "3"]),
    "prune_10pct_x5": ("pruned", "pruning.json", "compress/prune.py", "trainer_configs/prune/wikitext_2560.yaml",
                       ["--prune_fraction", "0.1", "--iterations", "5"]),
    "magnitude_50": ("sparse", "sparsity.json", "compress/sparsify.py",
                     "trainer_configs/sparsify/magnitude_50.yaml", []),
    "wanda_50": ("sparse", "sparsity.json", "compress/sparsify.py", "trainer_configs/sparsify/wanda_50.yaml", []),
    "magnitude_2of4": ("sparse", "sparsity.json", "compress/sparsify.py",
                       "trainer_configs/sparsify/magnitude_2of4.yaml", []),
    "wanda_2of4": ("sparse", "sparsity.json", "compress/sparsify.py", "trainer_configs/sparsify/wanda_2of4.yaml", []),
    "int8": ("quantized", "quantization.json", "compress/quantize.py", "trainer_configs/quantize/int8.yaml", []),
    "int4": ("quantized", "quantization.json", "compress/quantize.py", "trainer_configs/quantize/int4.yaml", []),
    "gptq_int4": ("quantized", "quantization.json", "compress/quantize.py", "trainer_configs/quantize/gptq.yaml", []),
}
FOLDER = {"student": "students", "dropped": "dropped", "pruned": "pruned", "sparse": "sparse", "quantized": "quantized"}


def _plan(*argv):
    return study.build_plan(study.parse_args(["reproduce", "--study", "modern", "--runs", "R", "--tccc-train", "t.csv",
                                              "--accelerate-config", "trainer_configs/accelerate/single_gpu.yaml",
                                              *argv]))


def test_modern_plan_takes_the_default_teacher_through_every_method_with_these_command_lines():
    plan = _plan()
    root = Path("R") / "modern" / "Qwen2.5-0.5B"
    assert plan.study == "modern" and plan.runs == root and plan.eval_root == root / "eval"
    assert [m.name for m in plan.models] == ["Qwen2.5-0.5B", *EXPECTED_24]
    teacher = plan.models[0]
    assert (teacher.kind, teacher.pretrained, teacher.build) == ("teacher", "Qwen/Qwen2.5-0.5B", None)
    for model in plan.models[1:]:
        kind, record, script, config, flags = EXPECTED_24[model.name]
        out = root / FOLDER[kind] / model.name
        source = "--teacher_name_or_path" if kind == "student" else "--model_name_or_path"
        launcher = ACCELERATE if kind in ("student", "dropped", "pruned") else PYTHON
        assert (model.kind, model.done_file, model.pretrained) == (kind, record, str(out))
        assert model.build.command() == [*launcher, script, config, source, "Qwen/Qwen2.5-0.5B", *flags,
                                         "--output_dir", str(out)], model.name
        assert (REPO / config).is_file()
        # The baseline: no --compare pair; the report reads it from the record, which names the teacher's hub id,
        # the same string lm-eval's pretrained= gives the teacher's results.
        assert model.compare_with is None and not model.distilled
    # The paper's prompts, tasks and lm-eval settings are shared.
    assert plan.data_dir == Path("R") / "prompts"
    assert [b.label for b in plan.eval_batches] == ["toxicity", "bias", "perplexity"]
    assert [b.tasks for b in plan.eval_batches] == [
        ["compfair_toxicity"], ["compfair_bias", "compfair_crows_pairs", "compfair_bold"], ["wikitext"]]


def test_another_teacher_sets_the_depths_and_its_own_folder():
    plan = _plan("--teacher", "meta-llama/Llama-3.2-1B")  # 16 blocks: half is 8, 8 dropped
    assert plan.runs == Path("R") / "modern" / "Llama-3.2-1B" and plan.models[0].name == "Llama-3.2-1B"
    by_name = {m.name: m.build.argv for m in plan.models[1:]}
    assert by_name["distill_half"][1:5] == ["--teacher_name_or_path", "meta-llama/Llama-3.2-1B",
                                            "--student_layers", "8"]
    assert by_name["drop_angular_half"][3:5] == ["--num_blocks_to_drop", "8"]
    # An odd depth: the student keeps floor(7 / 2) = 3 blocks, dropping removes the other 4.
    plan = _plan("--teacher", "/models/my-model/", "--teacher-blocks", "7")
    assert plan.models[0].name == "my-model" and plan.models[0].pretrained == "/models/my-model/"
    by_name = {m.name: m.build.argv for m in plan.models[1:]}
    assert by_name["distill_half"][3:5] == ["--student_layers", "3"]
    assert by_name["drop_influence_half"][3:5] == ["--num_blocks_to_drop", "4"]


def test_the_paper_study_stays_the_default_and_the_presets_do_not_mix(tmp_path):
    paper = study.build_plan(study.parse_args(["reproduce", "--runs", "R"]))
    assert paper.study == "paper" and paper.models[0].name == "gpt2" and paper.runs == Path("R")
    assert study.parse_args(["demo"]).runs == "runs/demo"
    assert study.parse_args(["demo", "--study", "modern"]).runs == "runs/demo_modern"
    assert study.STAGES.index("prune") < study.STAGES.index("drop_layers") < study.STAGES.index("quantize")
    with pytest.raises(SystemExit) as err:
        study.main(["reproduce", "--study", "modern", "--runs", str(tmp_path), "--models", "A,int8"])
    assert "unknown model(s) A for reproduce" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as err:  # offline, not a folder, not a teacher the preset knows
        _plan("--teacher", str(tmp_path / "no-such-model"))
    assert "--teacher-blocks" in str(err.value) and "\n" not in str(err.value)


def test_modern_demo_plan_is_the_same_preset_on_the_tiny_teacher():
    plan = study.build_plan(study.parse_args(["demo", "--study", "modern", "--runs", "D"]))
    root = Path("D").resolve()
    assert [m.name for m in plan.models] == ["teacher", *EXPECTED_24]
    assert plan.models[0].pretrained == str(root / "teacher") and plan.in_process
    for model in plan.models[1:]:
        argv = model.build.argv
        assert argv[:3] == [EXPECTED_24[model.name][3], argv[1], str(root / "teacher")]
        assert "--train_file" in argv and argv[argv.index("--train_file") + 1] == str(root / "data" / "corpus.txt")
    by_name = {m.name: m.build.argv for m in plan.models[1:]}
    assert by_name["distill_half"][3:5] == ["--student_layers", "6"]  # 12 blocks
    assert by_name["drop_angular_half"][3:5] == ["--num_blocks_to_drop", "6"]
    for name in ("int4", "gptq_int4"):  # n_embd 96: six groups of 16 inputs
        assert by_name[name][-2:] == ["--group_size", "16"]


def test_finished_models_are_skipped_and_models_narrows_the_work(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(study, "run_step", lambda step, what, env, in_process=False: ran.append(step.command()))
    base = ["reproduce", "--study", "modern", "--runs", str(tmp_path), "--teacher-blocks", "24",
            "--stages", "distill,prune,drop_layers,quantize,sparsify"]
    plan = _plan("--runs", str(tmp_path))
    for model in plan.models[1:]:
        Path(model.pretrained).mkdir(parents=True)
        if model.name != "drop_influence_half":
            (Path(model.pretrained) / EXPECTED_24[model.name][1]).write_text("{}")
    assert study.main(base) == 0
    assert ran == [next(m for m in plan.models if m.name == "drop_influence_half").build.command()]
    ran.clear()
    assert study.main([*base, "--models", "int8,wanda_50"]) == 0
    assert ran == []
    (Path(plan.models[1].pretrained) / "distillation.json").unlink()
    assert study.main([*base, "--models", "distill_half,int8"]) == 0
    assert ran == [plan.models[1].build.command()]


# ---------------------------------------------------------------------------------------------- demo, end to end

DEMO_MODELS = ("teacher", "distill_half", "drop_angular_half", "prune_5pct_x3", "magnitude_2of4", "int4")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_modern_demo_runs_and_compares_every_model_with_the_teacher(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "compress.study", "demo", "--study", "modern", "--runs", str(tmp_path),
         "--threads", "1", "--teacher-steps", "30", "--distill-steps", "5", "--prune-samples", "8",
         "--rtp-prompts", "6", "--tccc-prompts", "6", "--resamples", "200", "--models", ",".join(DEMO_MODELS)],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {row["model"]: row for row in _rows(tmp_path / "report" / "summary.csv")}
    assert set(rows) == set(DEMO_MODELS)
    methods = {name: rows[name]["method"] for name in DEMO_MODELS}
    assert methods == {"teacher": "original", "distill_half": "distillation", "drop_angular_half": "layer dropping",
                       "prune_5pct_x3": "head pruning", "magnitude_2of4": "sparsity", "int4": "quantization"}
    # every compressed model's baseline is the teacher, found through its own record, not --compare
    assert {rows[name]["baseline"] for name in DEMO_MODELS[1:]} == {"teacher"}
    report_command = [line for line in result.stderr.splitlines() if "compress.report.cli" in line]
    assert len(report_command) == 1 and "--compare" not in report_command[0]
    # 12 blocks: half depth by both routes; 144 heads, 5% three times: 144 -> 136 -> 129 -> 122
    assert (rows["teacher"]["blocks"], rows["distill_half"]["blocks"], rows["drop_angular_half"]["blocks"]) == \
        ("12", "6", "6")
    assert rows["prune_5pct_x3"]["heads"] == "122"
    comparisons = _rows(tmp_path / "report" / "comparisons.csv")
    assert {r["model"] for r in comparisons} == set(DEMO_MODELS[1:])
    # the dropped model also against the student of its depth: the control layer dropping is for
    assert {(r["model"], r["baseline"]) for r in comparisons} == {
        *((name, "teacher") for name in DEMO_MODELS[1:]), ("drop_angular_half", "distill_half")}
    assert "drop layers of drop_angular_half (1 of 1)" in result.stderr
