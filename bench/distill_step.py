"""Cost of a distillation step against a plain fine-tuning step of the same student, in one run.

Measures, on the same student and the same batch:
  - a plain next-token fine-tuning step (forward with labels, backward, AdamW step),
  - a distillation step (`DistillationTrainer.compute_loss`: student + frozen teacher + KD/CE loss,
    backward, AdamW step),
  - the teacher's forward alone,
  - the KD/CE loss's own peak memory (forward + backward on given logits), chunked and in one piece.

Goals: distillation step time <= (student step + teacher forward) * 1.10, and the chunked loss's peak
memory below the unchunked one's. Each workload runs in a fresh process so peak memory is its own
(CUDA: `max_memory_allocated`; CPU: the resident-set high-water mark). Times are the fastest of `--steps`
steps, the one least disturbed by other work on the machine. Prints one JSON line.

    python bench/distill_step.py                              # offline: a random GPT-2-shaped teacher
    python bench/distill_step.py --teacher gpt2 --bf16 --compile_loss   # the real GPT-2 on a GPU (hub or cache)
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

GOAL_TIME_RATIO = 1.10


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


class PeakMemory:
    """Peak memory (MB) above the level at which the context was entered.

    CUDA: the caching allocator's `max_memory_allocated`. CPU: the process's resident-set high-water
    mark, reset on entry through /proc/self/clear_refs (Linux), else the lifetime peak from getrusage.
    """

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current resident set
            self.start = _resident_bytes("VmRSS")
        except OSError:
            self.start = None
        if self.start is None:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _resident_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.mb = (peak - self.start) / 2**20


def _models(args, device):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from compress.models.students import build_student

    torch.manual_seed(0)
    if args.teacher:
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    else:
        teacher = GPT2LMHeadModel(GPT2Config(n_layer=args.teacher_layers, n_embd=args.n_embd, n_head=args.n_head,
                                             vocab_size=args.vocab_size, n_positions=max(args.seq_len, 128)))
    student, _ = build_student(teacher, args.student_layers)
    return teacher, student.to(device)


def _batch(args, vocab_size, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (args.batch_size, args.seq_len), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _autocast(args, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)


def _time_steps(step, args, device) -> list[float]:
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def student_step_worker(args) -> dict:
    """Plain next-token fine-tuning of the student: the model's own loss."""
    device = _device(args.device)
    _, student = _models(args, device)
    batch = _batch(args, student.config.vocab_size, device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    student.train()

    def step():
        with _autocast(args, device):
            loss = student(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        times = _time_steps(step, args, device)
    return {"seconds": min(times), "peak_mb": memory.mb}


def distill_step_worker(args) -> dict:
    """A step of `DistillationTrainer.compute_loss`, then the teacher's forward alone."""
    from compress.distillation.config import DistillationConfig
    from compress.distillation.trainer import DistillationTrainer

    device = _device(args.device)
    teacher, student = _models(args, device)
    batch = _batch(args, student.config.vocab_size, device)
    with tempfile.TemporaryDirectory() as tmp:
        config = DistillationConfig(output_dir=tmp, use_cpu=device.type == "cpu", bf16=args.bf16, report_to="none",
                                    kd_chunk_size=args.chunk_size, compile_loss=args.compile_loss)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    student.train()

    def step():
        with _autocast(args, device):
            loss = trainer.compute_loss(student, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        times = _time_steps(step, args, device)

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def teacher_forward():
        with torch.no_grad(), _autocast(args, device):
            trainer.teacher(**inputs)

    teacher_times = _time_steps(teacher_forward, args, device)
    return {"seconds": min(times), "peak_mb": memory.mb, "teacher_seconds": min(teacher_times)}


def kd_loss_worker(args, chunk_size: int | None) -> dict:
    """Peak memory of the KD/CE loss alone (forward + backward), given the two models' logits."""
    from compress.distillation.trainer import distillation_logit_loss, next_token_targets

    device = _device(args.device)
    vocab = args.vocab_size if not args.teacher else 50257
    g = torch.Generator().manual_seed(2)
    # Logits as the trainer sees them: the student's upcast to fp32 by mixed precision, the teacher's in
    # the training precision.
    student_logits = torch.randn(args.batch_size, args.seq_len, vocab, generator=g).to(device).requires_grad_()
    teacher_dtype = torch.bfloat16 if args.bf16 else torch.float32
    teacher_logits = torch.randn(args.batch_size, args.seq_len, vocab, generator=g).to(device, teacher_dtype)
    labels = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=g).to(device)
    targets, valid = next_token_targets(labels)
    weight = 0.5 / valid.sum()

    def loss_forward_backward():
        loss, _, _ = distillation_logit_loss(student_logits, teacher_logits, targets, valid, 2.0, 4 * weight, weight,
                                             chunk_size, args.compile_loss and chunk_size != 0)
        loss.backward()
        student_logits.grad = None

    loss_forward_backward()  # warm-up (and compilation)
    with PeakMemory(device) as memory:
        loss_forward_backward()
    return {"peak_mb": memory.mb}


def _in_fresh_process(fn, *fn_args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *fn_args).result()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="hub name or folder; default: a random GPT-2-shaped model")
    parser.add_argument("--teacher_layers", type=int, default=12)
    parser.add_argument("--student_layers", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=256, help="width of the random teacher (GPT-2 small: 768)")
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--chunk_size", type=int, default=None,
                        help="kd_chunk_size of the distillation step (default: the trainer's choice for the device)")
    parser.add_argument("--compile_loss", action="store_true", help="torch.compile the loss chunks (as compile_loss)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast and a bf16 teacher (GPU)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    student = _in_fresh_process(student_step_worker, args)
    distill = _in_fresh_process(distill_step_worker, args)
    chunked = _in_fresh_process(kd_loss_worker, args, args.chunk_size)
    unchunked = _in_fresh_process(kd_loss_worker, args, 0)

    from compress.distillation.trainer import default_chunk_size

    tokens = args.batch_size * args.seq_len
    budget = student["seconds"] + distill["teacher_seconds"]
    time_ratio = distill["seconds"] / budget
    memory_ratio = chunked["peak_mb"] / unchunked["peak_mb"] if unchunked["peak_mb"] > 0 else float("nan")
    result = {
        "bench": "distill_step",
        "device": str(_device(args.device)) + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
                                               and args.device != "cpu" else ""),
        "teacher": args.teacher or f"random gpt2 {args.teacher_layers}x{args.n_embd}",
        "student_layers": args.student_layers,
        "batch_tokens": tokens,
        "vocab_size": args.vocab_size if not args.teacher else None,
        "bf16": args.bf16,
        "kd_chunk_size": args.chunk_size or default_chunk_size(_device(args.device), args.vocab_size),
        "compile_loss": args.compile_loss,
        "student_step_s": round(student["seconds"], 4),
        "teacher_forward_s": round(distill["teacher_seconds"], 4),
        "distill_step_s": round(distill["seconds"], 4),
        "student_tokens_per_s": round(tokens / student["seconds"], 1),
        "distill_tokens_per_s": round(tokens / distill["seconds"], 1),
        "student_step_peak_mb": round(student["peak_mb"], 1),
        "distill_step_peak_mb": round(distill["peak_mb"], 1),
        "step_time_ratio": round(time_ratio, 3),
        "step_time_goal_met": time_ratio <= GOAL_TIME_RATIO,
        "kd_loss_peak_mb_chunked": round(chunked["peak_mb"], 1),
        "kd_loss_peak_mb_unchunked": round(unchunked["peak_mb"], 1),
        "kd_memory_ratio": round(memory_ratio, 3),
        "kd_memory_goal_met": chunked["peak_mb"] < unchunked["peak_mb"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
