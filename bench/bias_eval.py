"""How many likelihood requests the bias tasks issue, and how long they take, for a GPT-2-sized model.

A randomly initialised GPT-2-small-shaped model (12 blocks, 768 wide, 12 heads) with the real GPT-2 tokenizer
(../shared/data/gpt2_tokenizer) runs `compfair_bias` on the full StereoSet dev split (the simplified
../shared/data/stereoset/stereoset.jsonl: 2,106 intrasentence + 2,123 intersentence examples) and the official
WinoBias files (1,584 pairs). Random weights cost the same compute as trained ones.

Prints one JSON line: requests issued, sentence terms they cover (what one request per term would issue),
their ratio, and the wall time of `lm_eval.simple_evaluate` (model load included).

    python bench/bias_eval.py [--device cpu] [--batch_size 32] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPFAIR_SHARED_DATA", REPO.parent / "shared" / "data"))


def build_model(out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(SHARED / "gpt2_tokenizer")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer))).save_pretrained(out_dir)  # GPT-2 small's shape
    tokenizer.save_pretrained(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", default="32")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (for a quick look)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as model_dir:
        build_model(Path(model_dir))
        model_args = {"pretrained": model_dir}
        metadata = {**model_args, "data_dir": str(SHARED),
                    "stereoset_file": str(SHARED / "stereoset" / "stereoset.jsonl")}
        manager = TaskManager(include_path=str(REPO / "lm_eval_tasks"), include_defaults=False, metadata=metadata)
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=["compfair_bias"],
                                          task_manager=manager, device=args.device, batch_size=args.batch_size,
                                          limit=args.limit, log_samples=True, bootstrap_iters=1000)
        wall = time.perf_counter() - start

    issued = terms = docs = 0
    first_token_requests = set()
    for samples in results["samples"].values():
        for sample in samples:
            docs += 1
            issued += len(sample["arguments"])
            terms += sum(len(s["requests"]) for s in sample["doc"]["sentences"])
            first_token_requests.update(tuple(a) for a in sample["arguments"] if a[0] == "")
    intra = results["samples"]["compfair_stereoset_intrasentence"]
    print(json.dumps({
        "bench": "bias_eval", "model": "gpt2-small shape, random init, real GPT-2 tokenizer",
        "device": args.device, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "documents": docs, "requests": issued, "sentence_terms": terms,
        "terms_per_request": round(terms / issued, 3),
        "intrasentence_first_token_requests": sum(1 for s in intra for a in s["arguments"] if a[0] == ""),
        "wall_s": round(wall, 1), "requests_per_s": round(issued / wall, 1),
        "ss_intrasentence": results["results"]["compfair_stereoset_intrasentence"]["ss,none"],
    }))


if __name__ == "__main__":
    main()
