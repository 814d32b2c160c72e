"""Cost of a distillation training step on the real Trainer path, against a plain student step and a teacher forward.

Measures, on the same student, the same batches and the same `TrainingArguments` (bf16 autocast, AdamW):
  - a plain next-token training step of the student: the stock `transformers.Trainer`, whose loss is the
    model's own (full logits, upcast to fp32 by accelerate's `convert_outputs_to_fp32`),
  - a `DistillationTrainer` step: `trainer.train()` on the `accelerator.prepare`d student, frozen teacher,
    fused KD/CE loss, backward, AdamW step,
  - the teacher's forward alone (its decoder, under the same autocast, no grad: what the step runs of it),
  - for one extra step of each trainer, the largest tensor any op makes (forward and backward), next to
    the size of the batch's logits in fp32.

Goals (issue 15): distillation step peak memory <= (student step peak + teacher forward peak) * 1.10 and
no tensor of the batch's logits size in it; step time <= (student step + teacher forward) * 1.10. Each
workload runs in a fresh process; `--repeats` rounds run the three workloads interleaved (student,
distillation, teacher, then again), so load from other jobs falls on all of them alike; each time is the
fastest over all rounds (the `*_runs_s` fields list every round's, `step_time_ratio_per_round` each
round's ratio), each peak the largest. `*_cpu_s` are the processes' CPU times (all threads) of the same
steps: less sensitive than wall time to other jobs taking the cores. Peak memory is
above the level at which training starts (model, teacher and data loaded; the optimiser state, made in the
first step, counts): CUDA `max_memory_allocated`, CPU the resident-set high-water mark (reset through
/proc/self/clear_refs). A round's time is the fastest of its `--steps` steps after `--warmup`. Prints one
JSON line.

    python bench/distill_step.py                               # GPT-2's vocabulary, 4 x 512 tokens
    python bench/distill_step.py --vocab_size 128256           # Llama 3's vocabulary
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

GOAL_RATIO = 1.10


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Memory:
    """Peak memory above a baseline: CUDA allocator statistics, or the CPU resident-set high-water mark."""

    def __init__(self, device):
        self.device = device
        self.baseline = self.peak = 0

    def set_baseline(self):
        _sync(self.device)
        if self.device.type == "cuda":
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = _resident_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def reset_peak(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current resident set
        except OSError:
            pass

    def record_peak(self):
        _sync(self.device)
        if self.device.type == "cuda":
            now = torch.cuda.max_memory_allocated(self.device)
        else:
            now = _resident_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, now)

    @property
    def mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _models(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    from compress.models.students import build_student

    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(n_layer=args.teacher_layers, n_embd=args.n_embd, n_head=args.n_head,
                                         vocab_size=args.vocab_size, n_positions=max(args.seq_len, 128)))
    student, _ = build_student(teacher, args.student_layers)
    return teacher, student


def _examples(args, count):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab_size, (count, args.seq_len), generator=g)
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest tensor (bytes) any op makes while active, forward and backward."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.bytes = max(self.bytes, tensor.numel() * tensor.element_size())
        return out


def trainer_step_worker(args, distill: bool) -> dict:
    """`--warmup + --steps` timed Trainer steps, then one step under the tensor census."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    from compress.distillation.config import DistillationConfig
    from compress.distillation.trainer import DistillationTrainer

    device = _device(args.device)
    teacher, student = _models(args)
    steps = args.warmup + args.steps + 1
    memory = Memory(device)
    times: list[float] = []
    cpu_times: list[float] = []
    census = _LargestTensor()

    class Timing(TrainerCallback):
        def on_train_begin(self, *_, **__):
            memory.set_baseline()

        def on_step_begin(self, _args, state, *_, **__):
            if state.global_step == args.warmup:
                memory.reset_peak()
            _sync(device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, _args, state, *_, **__):
            _sync(device)
            if args.warmup < state.global_step <= args.warmup + args.steps:
                times.append(time.perf_counter() - self.start)
                cpu_times.append(time.process_time() - self.cpu_start)
                memory.record_peak()

    class Census:
        def training_step(self, model, inputs, *rest, **kwargs):
            if self.state.global_step == steps - 1:  # the last step: not timed, under the census
                with census:
                    return super().training_step(model, inputs, *rest, **kwargs)
            return super().training_step(model, inputs, *rest, **kwargs)

    common = dict(use_cpu=device.type == "cpu", bf16=args.bf16, report_to="none", max_steps=steps,
                  per_device_train_batch_size=args.batch_size, save_strategy="no", logging_strategy="no",
                  disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-5, seed=0)
    data = _examples(args, args.batch_size * steps)
    with tempfile.TemporaryDirectory() as tmp:
        if distill:
            config = DistillationConfig(output_dir=tmp, kd_chunk_size=args.chunk_size,
                                        kd_loss_backend=args.kd_loss_backend, **common)
            trainer_class = type("CensusDistillationTrainer", (Census, DistillationTrainer), {})
            trainer = trainer_class(model=student, teacher_model=teacher, args=config, train_dataset=data,
                                    data_collator=default_data_collator, callbacks=[Timing()])
        else:
            trainer_class = type("CensusTrainer", (Census, Trainer), {})
            trainer = trainer_class(model=student, args=TrainingArguments(output_dir=tmp, **common),
                                    train_dataset=data, data_collator=default_data_collator, callbacks=[Timing()])
        trainer.remove_callback(PrinterCallback)  # stdout keeps only the JSON line
        trainer.train()
    return {"seconds": min(times), "cpu_seconds": min(cpu_times), "peak_mb": memory.mb,
            "largest_tensor_mb": census.bytes / 2**20}


def teacher_forward_worker(args) -> dict:
    """The teacher's decoder forward under the training autocast, without gradients."""
    device = _device(args.device)
    teacher, _ = _models(args)
    teacher = teacher.to(device=device, dtype=torch.bfloat16 if args.bf16 else None).eval()
    batch = {key: torch.stack([e[key] for e in _examples(args, args.batch_size)]).to(device)
             for key in ("input_ids", "attention_mask")}
    memory = Memory(device)
    times, cpu_times = [], []
    memory.set_baseline()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            memory.reset_peak()
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            teacher.get_decoder()(**batch)
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            memory.record_peak()
    return {"seconds": min(times), "cpu_seconds": min(cpu_times), "peak_mb": memory.mb}


def _fastest(runs: list[dict]) -> dict:
    """The fastest time and the largest peak (and largest tensor) of one workload's rounds, and every time."""
    merged = {key: max(run[key] for run in runs) for key in runs[0]}
    merged["seconds"] = min(run["seconds"] for run in runs)
    merged["cpu_seconds"] = min(run["cpu_seconds"] for run in runs)
    merged["runs"] = [round(run["seconds"], 3) for run in runs]
    return merged


def _in_fresh_process(fn, *fn_args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *fn_args).result()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_layers", type=int, default=12)
    parser.add_argument("--student_layers", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=256, help="width of the random teacher (GPT-2 small: 768)")
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=50257, help="50257: GPT-2's; 128256: Llama 3's")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--chunk_size", type=int, default=None,
                        help="kd_chunk_size of the distillation step (default: the trainer's choice for the device)")
    parser.add_argument("--kd_loss_backend", default="torch", choices=["torch", "liger"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the three workloads")
    parser.add_argument("--no_bf16", dest="bf16", action="store_false", help="fp32 instead of bf16 autocast")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    rounds = [(_in_fresh_process(trainer_step_worker, args, False), _in_fresh_process(trainer_step_worker, args, True),
               _in_fresh_process(teacher_forward_worker, args)) for _ in range(args.repeats)]
    student, distill, teacher = (_fastest([round_[i] for round_ in rounds]) for i in range(3))

    from compress.distillation.fused_loss import default_chunk_size

    device = _device(args.device)
    tokens = args.batch_size * args.seq_len
    logits_mb = tokens * args.vocab_size * 4 / 2**20
    time_budget = student["seconds"] + teacher["seconds"]
    memory_budget = student["peak_mb"] + teacher["peak_mb"]
    result = {
        "bench": "distill_step",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "path": "Trainer.train on the accelerator.prepare'd student",
        "teacher": f"random gpt2 {args.teacher_layers}x{args.n_embd}",
        "student_layers": args.student_layers,
        "vocab_size": args.vocab_size,
        "batch": f"{args.batch_size}x{args.seq_len}",
        "batch_tokens": tokens,
        "bf16": args.bf16,
        "kd_loss_backend": args.kd_loss_backend,
        "kd_chunk_size": args.chunk_size or default_chunk_size(device, args.vocab_size),
        "batch_logits_fp32_mb": round(logits_mb, 1),
        "student_step_s": round(student["seconds"], 3),
        "teacher_forward_s": round(teacher["seconds"], 3),
        "distill_step_s": round(distill["seconds"], 3),
        "repeats": args.repeats,
        "student_step_runs_s": student["runs"],
        "teacher_forward_runs_s": teacher["runs"],
        "distill_step_runs_s": distill["runs"],
        "step_time_ratio": round(distill["seconds"] / time_budget, 3),
        "step_time_ratio_per_round": [round(d["seconds"] / (s["seconds"] + t["seconds"]), 3) for s, d, t in rounds],
        "student_step_cpu_s": round(student["cpu_seconds"], 3),
        "teacher_forward_cpu_s": round(teacher["cpu_seconds"], 3),
        "distill_step_cpu_s": round(distill["cpu_seconds"], 3),
        "step_cpu_time_ratio": round(distill["cpu_seconds"] / (student["cpu_seconds"] + teacher["cpu_seconds"]), 3),
        "step_time_goal_met": distill["seconds"] <= GOAL_RATIO * time_budget,
        "student_step_peak_mb": round(student["peak_mb"], 1),
        "teacher_forward_peak_mb": round(teacher["peak_mb"], 1),
        "distill_step_peak_mb": round(distill["peak_mb"], 1),
        "peak_memory_ratio": round(distill["peak_mb"] / memory_budget, 3),
        "peak_memory_goal_met": distill["peak_mb"] <= GOAL_RATIO * memory_budget,
        "student_step_largest_tensor_mb": round(student["largest_tensor_mb"], 1),
        "distill_step_largest_tensor_mb": round(distill["largest_tensor_mb"], 1),
        "no_logits_sized_tensor": distill["largest_tensor_mb"] < 0.5 * logits_mb,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
