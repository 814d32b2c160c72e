"""`DistillationTrainer`: a Hugging Face `Trainer` whose loss distils a frozen teacher into the student.

    loss = alpha_kd * KL(softmax(teacher / T) || softmax(student / T)) * T^2
         + alpha_ce * next-token cross-entropy
         + alpha_cos * (1 - cosine(student last hidden state, teacher last hidden state))

Every term is a mean over the predicted positions: a position counts when its next token is a label
(not -100) and both it and the next token are real tokens (attention mask 1). Everything else about
training (optimiser, schedule, mixed precision, DDP/FSDP/DeepSpeed, checkpoints, resuming with the
same data order) is the Trainer's.

Evaluation measures the student alone: `eval_loss` is its next-token cross-entropy, so
`eval_perplexity = exp(eval_loss)` (logged with it) is the usual perplexity and the best checkpoint is
the one that models the validation text best.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer

from compress.distillation.config import DistillationConfig

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor, attention_mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets aligned with the logits (position i predicts label i + 1) and the mask of positions that count.

    Keeping the logits unshifted lets the loss read them as a contiguous `(batch * length, vocab)` view
    instead of copying a shifted slice.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    if attention_mask is not None:
        real = attention_mask.bool()
        valid[:, :-1] &= real[:, :-1] & real[:, 1:]
    return targets.masked_fill(~valid, IGNORE_INDEX), valid


def _logit_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                 valid: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of KL(teacher_T || student_T) and of cross-entropy over the valid rows, by plain autograd.

    Every intermediate is a logit-sized fp32 tensor kept for backward: the reference the chunked
    version is tested and benchmarked against.
    """
    student = student_logits.float()
    ce = F.cross_entropy(student, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if teacher_logits is None:
        return ce.new_zeros(()), ce
    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    return (kl * valid).sum(), ce


def _chunk_terms_and_grad(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor,
                          valid: torch.Tensor, temperature: float, kd_weight: torch.Tensor, ce_weight: torch.Tensor,
                          with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """KL sum, CE sum and the gradient of kd_weight * KL + ce_weight * CE w.r.t. one chunk of student rows.

    d CE / d s = softmax(s) - onehot(target);  d KL / d s = (softmax(s / T) - softmax(t / T)) / T.
    Each vocab-sized buffer is reused in place once its value has been read, so a chunk holds at most
    four of them and makes few passes over memory; `torch.compile` fuses the same code further.
    """
    student = student.float()
    keep = valid.unsqueeze(1)
    safe_targets = targets.clamp(min=0).unsqueeze(1)  # ignored rows are masked by `keep`
    log_probs = F.log_softmax(student, dim=-1)
    ce = -(log_probs.gather(1, safe_targets).squeeze(1) * valid).sum()
    kd, grad = ce.new_zeros(()), None
    if with_grad:
        ce_scale = ce_weight * keep
        grad = log_probs.exp_().mul_(ce_scale).scatter_add_(1, safe_targets, -ce_scale)
    if teacher is not None:
        student_log_probs = F.log_softmax(student / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(teacher.float() / temperature, dim=-1)
        teacher_probs = teacher_log_probs.exp()
        kl_rows = teacher_log_probs.sub_(student_log_probs).mul_(teacher_probs).sum(-1)
        kd = (kl_rows * valid).sum()
        if with_grad:
            grad = grad.add_(student_log_probs.exp_().sub_(teacher_probs).mul_(kd_weight / temperature * keep))
    return kd, ce, grad


@functools.cache
def _compiled_chunk_terms_and_grad():
    return torch.compile(_chunk_terms_and_grad, dynamic=False)  # compiled on first use, once per process


class _ChunkedLogitLoss(torch.autograd.Function):
    """kd_weight * KL sum + ce_weight * CE sum over `(rows, vocab)` logits, a chunk of rows at a time.

    The gradient w.r.t. the student logits is written during the forward, chunk by chunk, into one
    buffer of the logits' own dtype, so no logit-sized fp32 intermediate is kept for backward and
    nothing is recomputed (the approach of chunked loss kernels such as Liger's).
    """

    @staticmethod
    def forward(ctx, student, teacher, targets, valid, temperature, kd_weight, ce_weight, chunk_size, compile_loss):
        terms_and_grad = _compiled_chunk_terms_and_grad() if compile_loss else _chunk_terms_and_grad
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        kd_total = torch.zeros((), dtype=torch.float32, device=student.device)
        ce_total = torch.zeros((), dtype=torch.float32, device=student.device)
        for start in range(0, student.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            kd, ce, chunk_grad = terms_and_grad(student[rows], None if teacher is None else teacher[rows],
                                                targets[rows], valid[rows], temperature, kd_weight, ce_weight,
                                                grad is not None)
            kd_total, ce_total = kd_total + kd, ce_total + ce
            if grad is not None:
                grad[rows] = chunk_grad
            del chunk_grad
        if grad is not None:
            ctx.save_for_backward(grad)
        sums = torch.stack([kd_total, ce_total])
        ctx.mark_non_differentiable(sums)
        return kd_weight * kd_total + ce_weight * ce_total, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        (grad,) = ctx.saved_tensors
        # In place: the buffer is used once (a second backward through the same graph is not supported).
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None, None, None, None, None


def default_chunk_size(device: torch.device, vocab_size: int) -> int:
    """Positions per loss chunk: 1024 on an accelerator; on CPU, as many as fit 8 MiB of fp32 logits.

    On CPU, glibc hands buffers larger than its mmap threshold (at most 32 MiB) back to the OS when they
    are freed, so every chunk's fresh buffers would fault their pages in again; below it they are reused,
    which makes small chunks about twice as fast there.
    """
    if device.type != "cpu":
        return 1024
    return max(1, (8 << 20) // (4 * vocab_size))


def distillation_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                            targets: torch.Tensor, valid: torch.Tensor, temperature: float,
                            kd_weight: torch.Tensor | float, ce_weight: torch.Tensor | float,
                            chunk_size: int | None = None, compile_loss: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kd_weight * KL sum + ce_weight * CE sum, KL sum, CE sum) over the valid positions.

    KL is taken at `temperature`, cross-entropy at 1; `teacher_logits=None` leaves the KL out (0).
    `chunk_size > 0` upcasts and differentiates `chunk_size` positions at a time, so the loss holds no
    full fp32 copy of either logit tensor; `chunk_size = 0` is plain autograd in one piece; `None` picks
    `default_chunk_size`. The sums are detached (for logging); the first value carries the gradient.
    """
    vocab = student_logits.shape[-1]
    if chunk_size is None:
        chunk_size = default_chunk_size(student_logits.device, vocab)
    student_rows = student_logits.reshape(-1, vocab)
    teacher_rows = None if teacher_logits is None else teacher_logits.reshape(-1, vocab)
    target_rows, valid_rows = targets.reshape(-1), valid.reshape(-1)
    if chunk_size <= 0:
        kd, ce = _logit_terms(student_rows, teacher_rows, target_rows, valid_rows, temperature)
        return kd_weight * kd + ce_weight * ce, kd.detach(), ce.detach()
    device = student_rows.device
    kd_weight, ce_weight = (torch.as_tensor(w, dtype=torch.float32, device=device) for w in (kd_weight, ce_weight))
    loss, sums = _ChunkedLogitLoss.apply(student_rows, teacher_rows, target_rows, valid_rows, temperature,
                                         kd_weight, ce_weight, chunk_size, compile_loss)
    return loss, sums[0], sums[1]


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, valid: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the valid positions (DistilBERT's cosine embedding loss)."""
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return ((1 - cosine) * valid).sum() / valid.sum().clamp(min=1)


def shared_vocabulary_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' logits over the rows they share.

    A teacher and a student with one tokenizer may still have embedding matrices of different sizes, padded
    past the tokenizer to a round number (Qwen2.5: 151,936 rows in the small models, 152,064 in 7B and
    up). No token maps to a padding row, so the loss compares the two over their common rows (every real
    token is among them: `compress/distill.py` checks the tokenizer fits both) and ignores the rest.
    """
    rows = min(student_logits.shape[-1], teacher_logits.shape[-1])
    if student_logits.shape[-1] == teacher_logits.shape[-1]:
        return student_logits, teacher_logits
    return student_logits[..., :rows], teacher_logits[..., :rows]


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class DistillationTrainer(Trainer):
    """`Trainer` with a frozen teacher and the distillation loss of `DistillationConfig`."""

    # `compute_loss` returns a per-micro-batch mean, so the Trainer divides it by the accumulation steps.
    # Packed blocks have the same number of positions in every micro-batch, which makes that the exact mean.
    loss_is_scaled_for_ga = False

    def __init__(self, model: PreTrainedModel, teacher_model: PreTrainedModel, args: DistillationConfig, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        # The loss is computed here, not by the model: no need for the Trainer to count tokens every step.
        self.model_accepts_loss_kwargs = False
        self.teacher = self._prepare_teacher(teacher_model)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_micro_batches = 0

    def _prepare_teacher(self, teacher: PreTrainedModel) -> PreTrainedModel:
        """Frozen, in eval mode, on this process's device, in the training precision.

        Each process holds a full copy (a few hundred MB for GPT-2); the student is the model that
        DDP/FSDP/DeepSpeed wrap. DeepSpeed ZeRO-3 would partition the teacher's weights at load time,
        which a plain forward cannot use, so it is refused here.
        """
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError("DeepSpeed ZeRO-3 is not supported for the teacher; use ZeRO-1/2, DDP or FSDP")
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher.to(device=self.args.device, dtype=dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        targets, valid = next_token_targets(labels, inputs.get("attention_mask"))
        positions = valid.sum().clamp(min=1)
        args = self.args

        if not model.training:  # evaluation: the student's own next-token loss
            outputs = model(**model_inputs)
            loss, _, _ = distillation_logit_loss(outputs.logits, None, targets, valid, 1.0, 0.0, 1 / positions,
                                                 args.kd_chunk_size, args.compile_loss)
            return (loss, outputs) if return_outputs else loss

        use_hidden = args.alpha_cos > 0
        # Labels stay out of the forward: the model's own loss would upcast all logits to fp32 at once.
        outputs = model(**model_inputs, output_hidden_states=use_hidden)
        with torch.no_grad():
            teacher_outputs = self.teacher(**model_inputs, output_hidden_states=use_hidden)
        kd_scale = args.temperature**2 / positions
        student_logits, teacher_logits = shared_vocabulary_logits(outputs.logits, teacher_outputs.logits)
        loss, kd_sum, ce_sum = distillation_logit_loss(
            student_logits, teacher_logits if args.alpha_kd > 0 else None, targets, valid, args.temperature,
            args.alpha_kd * kd_scale, args.alpha_ce / positions, args.kd_chunk_size, args.compile_loss)
        parts = {"kd": kd_sum * kd_scale, "ce": ce_sum / positions}
        if use_hidden:
            parts["cos"] = hidden_cosine_loss(outputs.hidden_states[-1], teacher_outputs.hidden_states[-1], valid)
            loss = loss + args.alpha_cos * parts["cos"]
        if args.alpha_kd == 0:
            del parts["kd"]
        self._record(parts)
        return (loss, outputs) if return_outputs else loss

    def _record(self, parts: dict[str, torch.Tensor]) -> None:
        for name, value in parts.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0) + value.detach().float()
        self._loss_micro_batches += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the loss terms (`loss_kd`, `loss_ce`, `loss_cos`, averaged over processes) to training logs,
        and `eval_perplexity` to evaluation logs."""
        if "loss" in logs and self._loss_micro_batches:
            for name, total in self._loss_sums.items():
                mean = self.accelerator.reduce(total / self._loss_micro_batches, reduction="mean")
                logs[f"loss_{name}"] = round(mean.item(), 4)
            self._loss_sums, self._loss_micro_batches = {}, 0
        for key in [k for k in logs if k.endswith("eval_loss")]:
            logs[key.replace("eval_loss", "eval_perplexity")] = perplexity(logs[key])
        super().log(logs, start_time)
