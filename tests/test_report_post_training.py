"""The report's rows for quantized and sparse models: method, bits or sparsity, bytes, and the paired
comparison with the uncompressed model each record names."""

import csv
import json

from report_fixtures import write_lm_eval_run

from compress.report import cli


def test_quantized_and_sparse_rows_and_their_baseline(tmp_path):
    models = tmp_path / "models"
    dense = models / "dense"
    dense.mkdir(parents=True)
    (dense / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2,
                                                   "num_attention_heads": 4}))
    records = {
        "q4": ("quantization.json", {"method": "gptq", "bits": 4, "group_size": 128, "format": "compressed-tensors",
                                     "model_name_or_path": str(dense),
                                     "bytes": {"linear_weight_bytes": 300, "source_linear_weight_bytes": 2000,
                                               "model_files_bytes": 1000, "source_model_files_bytes": 4000}}),
        "s24": ("sparsity.json", {"method": "wanda", "sparsity": None, "pattern": "2:4", "overall_sparsity": 0.5,
                                  "model_name_or_path": str(dense),
                                  "bytes": {"linear_weight_bytes": 2000, "source_linear_weight_bytes": 2000,
                                            "model_files_bytes": 4000, "source_model_files_bytes": 4000}}),
    }
    scores = [0.1 * (i % 7) for i in range(30)]
    write_lm_eval_run(tmp_path / "eval" / "dense", str(dense), {"compfair_tox4k": {"toxicity_mean": scores}})
    for name, (record_file, record) in records.items():
        folder = models / name
        folder.mkdir()
        (folder / "config.json").write_text((dense / "config.json").read_text())
        (folder / record_file).write_text(json.dumps(record))
        shifted = [s + 0.2 for s in scores] if name == "q4" else scores
        write_lm_eval_run(tmp_path / "eval" / name, str(folder), {"compfair_tox4k": {"toxicity_mean": shifted}})
    out = tmp_path / "report"
    assert cli.main([str(p) for p in sorted((tmp_path / "eval").iterdir())] + ["--out", str(out),
                                                                               "--resamples", "200"]) == 0
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert (rows["q4"]["method"], rows["q4"]["compression"], rows["q4"]["bits"]) == ("quantization", "gptq 4-bit g128",
                                                                                     "4")
    assert rows["q4"]["linear_weight_bytes"] == "300" and rows["q4"]["baseline_linear_weight_bytes"] == "2000"
    assert rows["q4"]["baseline"] == "dense" and rows["s24"]["baseline"] == "dense"
    assert (rows["s24"]["method"], rows["s24"]["sparsity"], rows["s24"]["pattern"]) == ("sparsity", "0.5", "2:4")
    summary = (out / "summary.md").read_text()
    assert "## Quantized and sparse models" in summary
    assert "| q4 | gptq 4-bit g128 | 4 | – | compressed-tensors | dense | 300 (0.15x) | 1,000 (0.25x) |" in summary
    # the paired test against the baseline: +0.2 on every document
    paired = list(csv.DictReader(open(out / "comparisons.csv", newline="")))
    q4 = [r for r in paired if r["model"] == "q4" and r["metric"] == "toxicity_mean"]
    assert q4 and q4[0]["baseline"] == "dense" and abs(float(q4[0]["diff"]) - 0.2) < 1e-9
