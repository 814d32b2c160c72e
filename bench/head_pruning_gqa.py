"""Benchmark head pruning of a grouped-query-attention model; prints ONE JSON line.

The model has Llama-3.2-1B's block and head layout (16 blocks, 32 query heads sharing 8 KV heads, 4 query
heads per KV group, SwiGLU MLP 4x wide, RMSNorm, rotary) with random weights; the unit is the KV group.
On a GPU it has Llama-3.2-1B's width (head_dim 64, hidden 2048, vocabulary 128,256); on CPU, by default,
a narrower one of the same head layout (head_dim 16, hidden 512, vocabulary 8,192), stated in the output.

(a) One importance pass (gates on, weights frozen, |dL/dgate| per sequence) against one plain forward +
    backward over the same batches. Goal: overhead <= 15%.
(b) After removing 25% of the KV groups (the least important 2 of 8 in every block), the compact model's
    measured speedup of a loglikelihood forward pass against the one its FLOP count predicts. Goal: at
    least 80% of the predicted speedup.

    python bench/head_pruning_gqa.py [--head-dim 64 --vocab 128256] [--seq-len 512 --batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compress.models.students import count_parameters
from compress.pruning.head_gates import HeadGates, accumulate_gate_gradients, finish_importance
from compress.pruning.head_pruning import compact_from_masked

GOAL_IMPORTANCE_OVERHEAD = 0.15
GOAL_FRACTION_OF_PREDICTED = 0.80


def parse_args(argv=None):
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=64 if gpu else 16)
    parser.add_argument("--vocab", type=int, default=128256 if gpu else 8192)
    parser.add_argument("--seq-len", type=int, default=512 if gpu else 128)
    parser.add_argument("--batch-size", type=int, default=8 if gpu else 2)
    parser.add_argument("--batches", type=int, default=4 if gpu else 2)
    parser.add_argument("--repeats", type=int, default=10 if gpu else 3)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32", choices=["float32", "bfloat16"])
    return parser.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_medians(fn_a, fn_b, repeats, device):
    """Median seconds of each, taking turns so that background load hits both alike (one warm-up each)."""
    times = ([], [])
    fn_a(), fn_b()
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - start)
    paired_medians.minima = (min(times[0]), min(times[1]))  # less sensitive to other jobs on a shared machine
    return statistics.median(times[0]), statistics.median(times[1])


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    hidden = 32 * args.head_dim
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=args.head_dim, max_position_embeddings=max(2048, args.seq_len),
                         tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    full = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=generator)
                .to(device)} for _ in range(args.batches)]

    gates = HeadGates(full, "kv_group")

    def importance_pass():
        return accumulate_gate_gradients(full, gates, batches)

    def forward_backward_pass():
        for batch in batches:
            full(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.backward()
        full.zero_grad(set_to_none=True)

    importance_s, plain_s = paired_medians(importance_pass, forward_backward_pass, args.repeats, device)
    importance_min = paired_medians.minima
    gradient_sum, tokens = importance_pass()
    importance = finish_importance(gradient_sum, tokens, gates.mask)
    mask = torch.ones_like(gates.mask)
    for layer, order in enumerate(importance.argsort(dim=1)):
        mask[layer, order[:2]] = 0  # 25% of the KV groups: the 2 least important of 8 in each block
    gates.remove()
    compact = compact_from_masked(full, mask, "kv_group").to(device).eval()

    ids = batches[0]["input_ids"]

    def loglikelihood(model):
        @torch.no_grad()
        def call():
            logits = model(input_ids=ids).logits[:, :-1].float()
            return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).sum()
        return call

    predicted = flops(loglikelihood(full)) / flops(loglikelihood(compact))
    full_s, compact_s = paired_medians(loglikelihood(full), loglikelihood(compact), args.repeats, device)
    measured = full_s / compact_s
    forward_min = paired_medians.minima
    overhead = importance_s / plain_s - 1
    print(json.dumps({
        "bench": "head_pruning_gqa",
        "model": f"Llama-3.2-1B head layout (16 blocks, 32 query / 8 KV heads), head_dim {args.head_dim}, hidden "
                 f"{hidden}, vocab {args.vocab}, random weights" + ("" if args.head_dim == 64 else
                                                                     " (narrower than Llama-3.2-1B's 64 / 2048)"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)", "dtype": args.dtype,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "importance_batches": args.batches,
        "importance_s": importance_s, "forward_backward_s": plain_s, "importance_overhead": overhead,
        "goal_overhead_max": GOAL_IMPORTANCE_OVERHEAD, "importance_meets_goal": overhead <= GOAL_IMPORTANCE_OVERHEAD,
        "kv_groups": {"unpruned": 16 * 8, "pruned": int(mask.sum())},
        "parameters": {"unpruned": count_parameters(full), "pruned": count_parameters(compact)},
        "unpruned_forward_s": full_s, "pruned_forward_s": compact_s, "measured_speedup": measured,
        "predicted_speedup": predicted, "speedup_over_predicted": measured / predicted,
        "speed_meets_goal": measured / predicted >= GOAL_FRACTION_OF_PREDICTED,
        "from_fastest_runs": {"importance_overhead": importance_min[0] / importance_min[1] - 1,
                              "measured_speedup": forward_min[0] / forward_min[1]},
    }))


if __name__ == "__main__":
    main()
