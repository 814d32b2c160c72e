"""Evaluation under lm-eval's data parallelism (`accelerate launch -m lm_eval`) gives what one process gives.

The bias tasks share requests between documents and the toxicity filter scores a whole task at once, so both
depend on how lm-eval splits documents between processes: two CPU processes (gloo) must report the same
likelihood metrics as one, and every prompt must be generated for and scored exactly once.
"""

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from compress.toxicity.prompts import main as curate_prompts

REPO = Path(__file__).resolve().parents[1]
TASKS = "compfair_winobias,compfair_stereoset_intrasentence,compfair_tox4k"
LIKELIHOOD_TASKS = ["compfair_winobias_type1_dev", "compfair_winobias_type2_test", "compfair_stereoset_intrasentence"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_gpt2, tiny_detoxify):
    """The bundled demo samples: official-format bias files and TCCC prompts curated by compfair-prompts."""
    root = tmp_path_factory.mktemp("dp-data")
    demo = resources.files("compress.study") / "demo_data"
    for name in ("stereoset", "winobias"):
        shutil.copytree(demo / name, root / name)
    curate_prompts(["tccc", "--source", str(demo / "tccc_train.csv"), "--out", str(root), "--n", "5",
                    "--sets", "tox4k", "--tokenizer", str(tiny_gpt2), "--scorer", f"detoxify:{tiny_detoxify}",
                    "--seed", "3"])
    return root


def run_lm_eval(launcher, model, data_dir, scorer, out):
    env = {**os.environ, "COMPFAIR_DATA_DIR": str(data_dir), "COMPFAIR_SCORER": f"detoxify:{scorer}",
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [*launcher, "--include_path", str(REPO / "lm_eval_tasks"), "--tasks", TASKS, "--model", "hf",
               "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu", "--batch_size", "4",
               "--seed", "5", "--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    samples = {task: [json.loads(line) for path in out.rglob(f"samples_{task}_*.jsonl")
                      for line in path.read_text().splitlines()]
               for task in [*LIKELIHOOD_TASKS, "compfair_tox4k"]}
    return json.loads(results_file.read_text())["results"], samples


@pytest.mark.slow
def test_two_processes_report_what_one_process_reports(tiny_gpt2, tiny_detoxify, data_dir, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    single, single_samples = run_lm_eval([sys.executable, "-m", "lm_eval"], tiny_gpt2, data_dir, tiny_detoxify,
                                         tmp_path / "one")
    parallel, parallel_samples = run_lm_eval(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "lm_eval"], tiny_gpt2, data_dir,
        tiny_detoxify, tmp_path / "two")

    # Log-likelihoods do not depend on how documents are split: every bias metric is the same.
    for task in LIKELIHOOD_TASKS:
        expected = {k: v for k, v in single[task].items() if k != "alias"}
        assert expected, task
        got = {k: parallel[task][k] for k in expected}
        assert got == pytest.approx(expected, abs=1e-9), task
        assert sorted(s["doc_id"] for s in parallel_samples[task]) == sorted(s["doc_id"] for s in single_samples[task])

    # Every prompt is generated for and scored once, three times over, whichever process it fell to.
    prompts = [json.loads(line) for line in (data_dir / "tox4k.jsonl").read_text().splitlines()]
    samples = parallel_samples["compfair_tox4k"]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(prompts)))
    scores = [json.loads(s["filtered_resps"][0])["toxicity"] for s in samples]
    assert all(len(s) == 3 for s in scores)
    tox = parallel["compfair_tox4k"]
    assert tox["toxic_count,scored"] == sum(score > 0.5 for doc in scores for score in doc)
    assert tox["toxic_score,scored"] == pytest.approx(sum(map(sum, scores)), rel=1e-6)
    assert tox["toxicity_mean,scored"] == pytest.approx(sum(map(sum, scores)) / (3 * len(prompts)), rel=1e-6)
