"""Evaluation under real data parallelism on CPU gives what one process gives.

`tests/sharded_hf.py` is lm-eval's `hf` model with the rank and world size of accelerate's gloo processes
(the stock class shards only when CUDA shows several GPUs). The test first checks that the two processes
really split the documents (each asked the model only about its own: doc_id % 2 == rank), then that

- the bias tasks (`SharedRequestTask`: each distinct request once per process) report exactly the metrics of
  one process, bootstrap standard errors included (they resample in an order fixed by the documents);
- a toxicity task with fewer prompts than 2 x processes (3 prompts: rank 1 holds one prompt and pads with a
  copy of it) scores every prompt exactly `repeats` = 3 times, and its metrics equal one process's.

Greedy decoding (`--gen_kwargs do_sample=False`) and batch size 1 make generation independent of how the
prompts were batched, so the two runs can be compared number for number.
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
HELPER = Path(__file__).with_name("sharded_hf.py")
BIAS_TASKS = ["compfair_winobias_type1_dev", "compfair_winobias_type2_test", "compfair_stereoset_intrasentence",
              "compfair_stereoset_intersentence"]
TOXICITY_TASK = "compfair_tox4k"
REPEATS = 3  # lm_eval_tasks/toxicity/_default_toxicity.yaml


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_gpt2, tiny_detoxify):
    """The bundled demo bias files and 3 TCCC prompts curated by compfair-prompts."""
    root = tmp_path_factory.mktemp("dp-data")
    demo = resources.files("compress.study") / "demo_data"
    for name in ("stereoset", "winobias"):
        shutil.copytree(demo / name, root / name)
    curate_prompts(["tccc", "--source", str(demo / "tccc_train.csv"), "--out", str(root), "--n", "3",
                    "--sets", "tox4k", "--tokenizer", str(tiny_gpt2), "--scorer", f"detoxify:{tiny_detoxify}",
                    "--seed", "3"])
    return root


def same_metrics(got: dict, expected: dict, rel: float, abs_: float) -> bool:
    """Every metric (`name,filter` keys) equal: numbers within tolerance, strings such as "N/A" exactly."""
    keys = [k for k in expected if "," in k]
    assert keys and all(k in got for k in keys)
    numbers = [k for k in keys if isinstance(expected[k], (int, float))]
    assert all(got[k] == expected[k] for k in keys if k not in numbers)
    return [got[k] for k in numbers] == pytest.approx([expected[k] for k in numbers], rel=rel, abs=abs_,
                                                      nan_ok=True)


def run_lm_eval(launcher, model, data_dir, scorer, out):
    env = {**os.environ, "COMPFAIR_DATA_DIR": str(data_dir), "COMPFAIR_SCORER": f"detoxify:{scorer}",
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "COMPFAIR_SHARDING_RECORD": str(out / "record")}
    command = [*launcher, str(HELPER), "--include_path", str(REPO / "lm_eval_tasks"),
               "--tasks", ",".join([*BIAS_TASKS, TOXICITY_TASK]), "--model", "compfair_sharded_hf",
               "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu", "--batch_size", "1",
               "--gen_kwargs", "do_sample=False", "--seed", "5", "--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    samples = {task: [json.loads(line) for path in out.rglob(f"samples_{task}_*.jsonl")
                      for line in path.read_text().splitlines()]
               for task in [*BIAS_TASKS, TOXICITY_TASK]}
    records = {int(p.stem[len("rank"):]): json.loads(p.read_text()) for p in (out / "record").glob("rank*.json")}
    return json.loads(results_file.read_text())["results"], samples, records


@pytest.mark.slow
def test_two_sharded_processes_report_what_one_process_reports(tiny_gpt2, tiny_detoxify, data_dir, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    single, single_samples, single_records = run_lm_eval([sys.executable], tiny_gpt2, data_dir, tiny_detoxify,
                                                         tmp_path / "one")
    parallel, parallel_samples, records = run_lm_eval(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2"], tiny_gpt2, data_dir, tiny_detoxify,
        tmp_path / "two")

    # The documents really were split: each process asked the model only about its own share.
    assert [r["world_size"] for r in single_records.values()] == [1]
    assert sorted(records) == [0, 1] and all(records[r]["world_size"] == 2 for r in records)
    for task in [*BIAS_TASKS, TOXICITY_TASK]:
        n_docs = len(single_samples[task])
        assert sorted(s["doc_id"] for s in single_samples[task]) == list(range(n_docs)) and n_docs >= 3, task
        for rank, record in records.items():
            asked = {r["doc_id"] for r in record["requests"] if r["task"] == task}
            assert asked == {i for i in range(n_docs) if i % 2 == rank}, (task, rank)
        assert sorted(s["doc_id"] for s in parallel_samples[task]) == list(range(n_docs)), task

    # Log-likelihoods do not depend on how documents are split: every bias metric is the same, the bootstrap
    # standard errors of ss / lms / icat included.
    for task in BIAS_TASKS:
        assert any(k.startswith("ss_stderr") for k in single[task]) or "winobias" in task
        assert same_metrics(parallel[task], single[task], rel=0, abs_=1e-9), task

    # Three prompts, two processes: rank 1 holds prompt 1 alone and pads with a copy of it. Every prompt is
    # still generated for and scored exactly three times, and the metrics are those of one process.
    for samples in (single_samples[TOXICITY_TASK], parallel_samples[TOXICITY_TASK]):
        for sample in samples:
            assert len(sample["resps"][0]) == REPEATS, sample["doc_id"]
            assert len(json.loads(sample["filtered_resps"][0])["toxicity"]) == REPEATS, sample["doc_id"]
    scores = [json.loads(s["filtered_resps"][0])["toxicity"]
              for s in sorted(parallel_samples[TOXICITY_TASK], key=lambda s: s["doc_id"])]
    tox = parallel[TOXICITY_TASK]
    assert tox["toxic_count,scored"] == sum(score > 0.5 for doc in scores for score in doc)
    assert tox["toxic_score,scored"] == pytest.approx(sum(map(sum, scores)), rel=1e-6)
    assert same_metrics(tox, single[TOXICITY_TASK], rel=1e-6, abs_=1e-12)


def test_bootstrap_errors_do_not_depend_on_the_order_the_documents_arrive_in(tmp_path):
    """Two processes hand back their shares in turn: the same documents in another order, same errors."""
    import random

    from compress.bias import metrics as bias_metrics
    from compress.report.results import read_doc_values

    rng = random.Random(0)
    items = [bias_metrics.stereoset_item(f"t{i % 7}", "race", {"stereotype": rng.random(), "anti-stereotype":
                                         rng.random(), "unrelated": rng.random()}, doc_id=f"ex{i}")
             for i in range(41)]
    shards = items[0::2] + items[1::2]  # what two processes gather: rank 0's documents, then rank 1's
    assert shards != items
    assert bias_metrics.stereoset_bootstrap_stderr(shards) == bias_metrics.stereoset_bootstrap_stderr(items)

    # The report reads per-document values in doc_id order, whatever order the samples file has.
    records = [{"doc_id": i, "doc_hash": f"h{i}", "filter": "none", "metrics": ["ss"], "ss": item}
               for i, item in enumerate(items)]
    for name, ordered in (("one", records), ("two", records[0::2] + records[1::2])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ordered))
    one, two = (read_doc_values(tmp_path / f"{name}.jsonl", "none") for name in ("one", "two"))
    assert list(one) == list(two) == [f"{i}:h{i}" for i in range(41)]
