"""Texts per second of the batched toxicity filter against scoring one text at a time, same classifier, one run.

The classifier is a BERT-base-sized Detoxify-format checkpoint (12 blocks, 768 wide, 6 outputs) with random
weights, which cost the same compute as trained ones; its WordPiece vocabulary is trained on the texts so
token counts are realistic. The texts are what the toxicity tasks score: RealToxicityPrompts continuations
alone and prompt + continuation (from ../shared/data/rtp when present, else sentences from the embedded
corpus). Both sides score the same texts: the filter's scorer (`compress.toxicity.scorers`, length-sorted batches)
and `Detoxify.predict` called once per text. Goal: >= 3x on 2 CPU cores, >= 20x on a GPU.
Prints one JSON line.

    python bench/toxicity_scoring.py [--device cpu|cuda] [--n_texts 256] [--batch_size N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPFAIR_SHARED_DATA", REPO.parent / "shared" / "data"))


def bench_texts(n: int) -> tuple[list[str], str]:
    rng = random.Random(0)
    rtp = SHARED / "rtp"
    if rtp.is_dir():
        records = [json.loads(line) for name in ("nontoxic.jsonl", "toxic.jsonl")
                   for line in (rtp / name).read_text().splitlines()]
        pairs = [(r["prompt"]["text"], r["continuation"]["text"]) for r in records]
        source = "RealToxicityPrompts sample"
    else:
        from compress.common.tiny_models import corpus_lines

        lines = corpus_lines()
        pairs = [(rng.choice(lines), " " + rng.choice(lines)) for _ in range(n)]
        source = "embedded corpus"
    pairs = [rng.choice(pairs) for _ in range(n)]
    # Half scored as the continuation alone (rtp, tox4k), half as prompt + continuation (random4k, safe4k).
    return [c if i % 2 else p + c for i, (p, c) in enumerate(pairs)], source


def build_classifier(out_dir: Path, texts: list[str]) -> Path:
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from compress.common.tiny_models import TOXICITY_CLASSES

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=30522, min_frequency=1)
    tokenizer = BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), num_labels=len(TOXICITY_CLASSES),
                        problem_type="multi_label_classification")  # BERT-base otherwise
    model = BertForSequenceClassification(config)
    config.save_pretrained(out_dir)
    ckpt = out_dir / "bert-base-random.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(out_dir), "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizerFast",
                                             "num_classes": len(TOXICITY_CLASSES)}},
                           "dataset": {"args": {"classes": TOXICITY_CLASSES}}},
                "state_dict": model.state_dict()}, ckpt)
    return ckpt


def texts_per_second(fn, texts: list[str], device: str) -> float:
    import torch

    fn(texts[:8])  # warm-up: lazy initialisation and allocator growth stay out of the timing
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(texts)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--n_texts", type=int, default=None, help="default: 256 on cpu, 4096 on cuda")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the scorer's (64 on GPU, 16 on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids thread thrashing on a busy machine)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from detoxify import Detoxify

    from compress.toxicity.scorers import load_scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    n_texts = args.n_texts or (4096 if device.startswith("cuda") else 256)
    texts, source = bench_texts(n_texts)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = build_classifier(Path(folder), texts)
        batched = load_scorer(f"detoxify:{ckpt}", device=device, batch_size=args.batch_size)
        one_by_one = Detoxify(checkpoint=str(ckpt), huggingface_config_path=folder, device=device)

        def each_alone(chunk):
            return [one_by_one.predict(text)["toxicity"] for text in chunk]

        batched_rate = texts_per_second(batched.score, texts, device)
        single_rate = texts_per_second(each_alone, texts, device)
        check = texts[:64]
        max_diff = float(np.max(np.abs(np.array(batched.score(check)) - np.array(each_alone(check)))))
        tokens = [len(ids) for ids in batched.tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    goal = 20 if device.startswith("cuda") else 3
    ratio = batched_rate / single_rate
    print(json.dumps({
        "bench": "toxicity_scoring", "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu x{os.cpu_count()}",
        "torch_threads": torch.get_num_threads(), "texts": n_texts, "text_source": source,
        "mean_tokens": round(sum(tokens) / len(tokens), 1), "batch_size": batched.batch_size,
        "batched_texts_per_s": round(batched_rate, 1), "one_at_a_time_texts_per_s": round(single_rate, 1),
        "ratio": round(ratio, 2), "goal_ratio": goal, "meets_goal": ratio >= goal,
        "max_abs_score_diff": max_diff,
    }))


if __name__ == "__main__":
    main()
