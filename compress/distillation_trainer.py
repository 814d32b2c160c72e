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

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, Trainer

from compress.distillation_config import DistillationConfig

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


def _summed_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                  valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """[sum of KL(teacher_T || student_T), sum of cross-entropy] over the valid rows of a `(rows, vocab)` block.

    Upcasts to fp32 here, one block at a time, so that a full fp32 copy of the logits never exists.
    """
    student = student_logits.float()
    ce = F.cross_entropy(student, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if teacher_logits is None:
        return torch.stack([ce.new_zeros(()), ce])
    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    return torch.stack([(kl * valid).sum(), ce])


def kd_and_ce_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                   valid: torch.Tensor, temperature: float, chunk_size: int = 1024
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL (at `temperature`) and cross-entropy over the valid positions, in chunks of positions.

    With `chunk_size > 0` each chunk's fp32 softmaxes are freed after its forward and recomputed in
    backward (activation checkpointing), so the loss's own memory is a few chunk-sized fp32 blocks
    rather than several logit-sized ones. `teacher_logits=None` gives the cross-entropy alone.
    """
    vocab = student_logits.shape[-1]
    student_rows = student_logits.reshape(-1, vocab)
    teacher_rows = None if teacher_logits is None else teacher_logits.reshape(-1, vocab)
    target_rows, valid_rows = targets.reshape(-1), valid.reshape(-1)
    rows = student_rows.shape[0]
    if chunk_size <= 0 or rows <= chunk_size:
        sums = _summed_terms(student_rows, teacher_rows, target_rows, valid_rows, temperature)
        return sums[0], sums[1]

    recompute = torch.is_grad_enabled() and student_rows.requires_grad
    teacher_chunks = [None] * math.ceil(rows / chunk_size) if teacher_rows is None else teacher_rows.split(chunk_size)
    sums = student_rows.new_zeros(2, dtype=torch.float32)
    # `split` (not slicing) so that backward concatenates the chunk gradients once.
    for student, teacher, target, keep in zip(student_rows.split(chunk_size), teacher_chunks,
                                              target_rows.split(chunk_size), valid_rows.split(chunk_size)):
        if recompute:
            sums = sums + checkpoint(_summed_terms, student, teacher, target, keep, temperature, use_reentrant=False)
        else:
            sums = sums + _summed_terms(student, teacher, target, keep, temperature)
    return sums[0], sums[1]


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, valid: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the valid positions (DistilBERT's cosine embedding loss)."""
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return ((1 - cosine) * valid).sum() / valid.sum().clamp(min=1)


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
            _, ce_sum = kd_and_ce_sums(outputs.logits, None, targets, valid, 1.0, args.kd_chunk_size)
            loss = ce_sum / positions
            return (loss, outputs) if return_outputs else loss

        use_hidden = args.alpha_cos > 0
        # Labels stay out of the forward: the model's own loss would upcast all logits to fp32 at once.
        outputs = model(**model_inputs, output_hidden_states=use_hidden)
        with torch.no_grad():
            teacher_outputs = self.teacher(**model_inputs, output_hidden_states=use_hidden)
        teacher_logits = teacher_outputs.logits if args.alpha_kd > 0 else None
        kd_sum, ce_sum = kd_and_ce_sums(outputs.logits, teacher_logits, targets, valid, args.temperature,
                                        args.kd_chunk_size)
        parts = {"kd": kd_sum / positions * args.temperature**2, "ce": ce_sum / positions}
        loss = args.alpha_kd * parts["kd"] + args.alpha_ce * parts["ce"]
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
