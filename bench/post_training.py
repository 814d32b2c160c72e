"""Benchmark post-training quantization and sparsity; prints one JSON line per method, then ONE summary line.

For each method (int8, int4, GPTQ, AWQ; magnitude, Wanda, SparseGPT at 50% and Wanda 2:4) on a small random
Llama with grouped-query attention (speed and size do not depend on the weights):

(a) bytes of the block linear weights and of the checkpoint's model files against the dense bf16 checkpoint,
    and against each format's theoretical size including scales. Goal: within 5% of the theoretical size.
(b) latency of a loglikelihood batch (one forward pass) and of greedy generation against the dense model,
    loaded the way lm-eval loads them (transformers, CPU here; GPU when one is present).
(c) quantization/calibration wall time per million linear parameters.

Honest expectation, measured here: transformers decompresses compressed-tensors checkpoints to dense weights
when it loads them, and zeros in a dense checkpoint are multiplied like any other weight, so neither format is
faster through transformers; the gain is the bytes on disk (quantized) and nothing without sparse kernels
(unstructured sparsity), which is what the latency ratios show.

    python bench/post_training.py [--hidden 256 --layers 4 --samples 32 --repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compress import quantize, sparsify  # noqa: E402
from compress.common import tiny_models  # noqa: E402
from compress.common.checkpoint_files import model_files_bytes  # noqa: E402
from compress.common.post_training import linear_weight_bytes  # noqa: E402

GOAL_OF_THEORETICAL = 0.05
METHODS = [
    ("quantize", "int8", []),
    ("quantize", "int4", ["--group_size", "128"]),
    ("quantize", "gptq", ["--group_size", "128"]),
    ("quantize", "awq", ["--group_size", "128"]),
    ("sparsify", "magnitude", ["--sparsity", "0.5"]),
    ("sparsify", "wanda", ["--sparsity", "0.5"]),
    ("sparsify", "sparsegpt", ["--sparsity", "0.5"]),
    ("sparsify", "wanda", ["--pattern", "2:4"]),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=32, help="calibration blocks")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="loglikelihood batch size")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (a compressed-tensors model decompresses on its first forward pass)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latency(folder: Path, args, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    ids = torch.randint(0, 500, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    prompt = ids[:1, :16]
    with torch.no_grad():
        loglik = timed(lambda: model(ids).logits.log_softmax(-1), args.repeats)
        generate = timed(lambda: model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                do_sample=False, pad_token_id=0), args.repeats)
    return {"loglikelihood_s": loglik, "generate_s": generate}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the CPU is shared; one thread gives steadier ratios
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-post-training-"))
    dense = work / "dense"
    model, tokenizer = tiny_models.build_tiny_llama(dense, layers=args.layers, hidden_size=args.hidden, heads=8,
                                                    kv_heads=4, intermediate_size=3 * args.hidden)
    dense_bf16 = work / "dense_bf16"
    model.to(torch.bfloat16).save_pretrained(dense_bf16)
    tokenizer.save_pretrained(dense_bf16)
    calib = work / "calib.txt"
    calib.write_text(tiny_models.CORPUS * 40, encoding="utf-8")
    linear_names = [f"model.layers.{i}.{n}" for i in range(args.layers) for n in
                    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    dense_linear = linear_weight_bytes(dense_bf16, linear_names)
    dense_files = model_files_bytes(dense_bf16)
    dense_latency = latency(dense, args, device)
    lines = []
    for tool, method, flags in METHODS:
        out = work / f"{method}{''.join(flags).replace('--', '_').replace(':', 'of')}"
        argv = ["--model_name_or_path", str(dense_bf16), "--output_dir", str(out), "--method", method, *flags,
                "--train_file", str(calib), "--block_size", str(args.block_size), "--num_samples", str(args.samples),
                "--dtype", "bfloat16"]
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
            record = (quantize if tool == "quantize" else sparsify).main(argv)
        sizes = record["bytes"]
        theoretical = record.get("theoretical_linear_weight_bytes", dense_linear)
        measured = latency(out, args, device)
        line = {
            "bench": "post_training", "tool": tool, "method": method, "device": device,
            "bits": record.get("bits"), "group_size": record.get("group_size"),
            "sparsity": record.get("overall_sparsity"), "pattern": record.get("pattern"), "format": record["format"],
            "linear_parameters": record["linear_parameters"],
            "linear_weight_bytes": sizes["linear_weight_bytes"], "dense_bf16_linear_weight_bytes": dense_linear,
            "linear_bytes_ratio": sizes["linear_weight_bytes"] / dense_linear,
            "theoretical_linear_weight_bytes": theoretical,
            "off_theoretical": sizes["linear_weight_bytes"] / theoretical - 1,
            "within_goal": abs(sizes["linear_weight_bytes"] / theoretical - 1) <= GOAL_OF_THEORETICAL,
            "model_files_bytes": sizes["model_files_bytes"], "dense_bf16_model_files_bytes": dense_files,
            "model_files_ratio": sizes["model_files_bytes"] / dense_files,
            "seconds": record["seconds"], "seconds_per_million_parameters": record["seconds_per_million_parameters"],
            "loglikelihood_s": measured["loglikelihood_s"], "dense_loglikelihood_s": dense_latency["loglikelihood_s"],
            "loglikelihood_speedup": dense_latency["loglikelihood_s"] / measured["loglikelihood_s"],
            "generate_s": measured["generate_s"], "dense_generate_s": dense_latency["generate_s"],
            "generate_speedup": dense_latency["generate_s"] / measured["generate_s"],
            "settings": {"hidden": args.hidden, "layers": args.layers, "batch": args.batch, "seq_len": args.seq_len,
                         "new_tokens": args.new_tokens, "samples": args.samples, "block_size": args.block_size,
                         "threads": torch.get_num_threads()},
        }
        print(json.dumps(line), flush=True)
        lines.append(line)
    summary = {"bench": "post_training", "methods": [
        {k: line[k] for k in ("method", "bits", "pattern", "linear_bytes_ratio", "off_theoretical", "within_goal",
                              "loglikelihood_speedup", "generate_speedup", "seconds_per_million_parameters")}
        for line in lines], "all_within_goal": all(line["within_goal"] for line in lines)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
