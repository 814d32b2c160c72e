"""Hand-built lm-eval output directories with known per-document values, for the report's tests.

`write_lm_eval_run` writes what `lm_eval --output_path DIR --log_samples` writes: one
`results_<date>.json` with the aggregated metrics and one `samples_<task>_<date>.jsonl` per task,
in the directory lm-eval names after the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

SUMMED = {"toxic_count", "toxic_score", "anti_count"}


def aggregate(metric: str, values: list) -> float:
    if isinstance(values[0], (list, tuple)):  # (loglikelihood, words) pairs: lm-eval's weighted perplexity
        return math.exp(-sum(v[0] for v in values) / sum(v[1] for v in values))
    return float(sum(values)) if metric in SUMMED else float(sum(values)) / len(values)


def write_lm_eval_run(output_path: Path, model: str, tasks: dict[str, dict[str, list]],
                      date: str = "2024-01-01T00-00-00.0", num_parameters: int | None = None,
                      with_samples: bool = True) -> Path:
    """tasks: {task: {metric: [per-doc value, ...]}} -> the results file written."""
    folder = Path(output_path) / model.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for task, metrics in tasks.items():
        entry = {"alias": task}
        for metric, values in metrics.items():
            entry[f"{metric},none"] = aggregate(metric, values)
            entry[f"{metric}_stderr,none"] = "N/A"
        results[task] = entry
        if not with_samples:
            continue
        n_docs = len(next(iter(metrics.values())))
        with open(folder / f"samples_{task}_{date}.jsonl", "w", encoding="utf-8") as handle:
            for doc_id in range(n_docs):
                doc = {"prompt": f"prompt number {doc_id}"}
                record = {"doc_id": doc_id, "doc": doc, "target": "", "arguments": {}, "resps": [],
                          "filtered_resps": [], "filter": "none", "metrics": list(metrics),
                          "doc_hash": hashlib.sha256(json.dumps(doc).encode()).hexdigest(),
                          "prompt_hash": "", "target_hash": ""}
                record.update({metric: values[doc_id] for metric, values in metrics.items()})
                handle.write(json.dumps(record) + "\n")
    data = {"results": results, "group_subtasks": {}, "configs": {},
            "n-samples": {task: {"original": len(next(iter(m.values()))), "effective": len(next(iter(m.values())))}
                          for task, m in tasks.items()},
            "config": {"model": "hf", "model_args": {"pretrained": model}, "model_num_parameters": num_parameters},
            "model_name": model, "model_name_sanitized": model.replace("/", "__")}
    path = folder / f"results_{date}.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path
