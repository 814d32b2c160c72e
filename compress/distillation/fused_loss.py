"""The KD and CE terms of the distillation loss, computed from hidden states and LM-head weights a chunk at a time.

    kd_weight * sum_i KL(softmax(t_i / T) || softmax(s_i / T)) + ce_weight * sum_i CE(s_i, y_i)

with s_i = h_i W_s^T the student's logits and t_i = g_i W_t^T the teacher's (each passed through
c * tanh(. / c) where its config caps them, as Gemma 2's `final_logit_softcapping` does), over the positions i
that count. Neither model's logits exist for the whole batch: per chunk of positions both logit blocks are
computed, the softmaxes taken in fp32, the two terms summed, and the gradients with respect to the
student's hidden states and head weight written during the forward (the fused linear + loss idea of
Liger Kernel's `LigerFusedLinearJSD` and fused linear cross-entropy). Backward only scales them by the
incoming gradient, so nothing logit-sized is kept for it either.

Precision: the logit matmuls run in the autocast dtype when autocast is on (as `lm_head` would), else in
the promoted dtype of the inputs; softmaxes and the loss in fp32; the gradients are accumulated in fp32
buffers and multiplied by the incoming gradient (which carries any fp16 loss scale) before they are cast
to the inputs' dtypes, so fp16 gradients of size ~1 / (positions * vocab) do not underflow. With fp16
logits the gradient matmuls run in fp32 (an fp16 gradient of the logits would underflow); with bf16
they run in bf16, whose range is fp32's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def default_chunk_size(device: torch.device, vocab_size: int) -> int:
    """Positions per chunk: on CPU as many as fit 8 MiB of fp32 logits; on an accelerator up to 1024, at most
    256 MiB of fp32 logits per buffer (a chunk holds about four such buffers).

    On CPU, glibc hands buffers larger than its mmap threshold (at most 32 MiB) back to the OS when they
    are freed, so every chunk's fresh buffers would fault their pages in again; below it they are reused,
    which makes small chunks about twice as fast there.
    """
    budget = 8 << 20 if device.type == "cpu" else 256 << 20
    rows = max(1, budget // (4 * vocab_size))
    return rows if device.type == "cpu" else min(1024, rows)


def _compute_dtype(device: torch.device, *tensors: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.result_type(*tensors) if len(tensors) > 1 else tensors[0].dtype


def _chunk_terms_and_logit_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                                targets: torch.Tensor, valid: torch.Tensor, temperature: float,
                                kd_weight: torch.Tensor, ce_weight: torch.Tensor, with_grad: bool
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """KL sum, CE sum, and d(kd_weight * KL + ce_weight * CE) / d(student logits) for one chunk (all fp32).

    d CE / d s = softmax(s) - onehot(y);  d KL / d s = (softmax(s / T) - softmax(t / T)) / T.
    Each vocab-sized buffer is reused in place once read: a chunk holds at most four of them.
    """
    keep = valid.unsqueeze(1)
    safe_targets = targets.clamp(min=0).unsqueeze(1)  # ignored rows are masked by `keep`
    log_probs = F.log_softmax(student_logits, dim=-1)
    ce = -(log_probs.gather(1, safe_targets).squeeze(1) * valid).sum()
    kd, grad = ce.new_zeros(()), None
    if with_grad:
        ce_scale = ce_weight * keep
        grad = log_probs.exp_().mul_(ce_scale).scatter_add_(1, safe_targets, -ce_scale)
    del log_probs
    if teacher_logits is not None:
        teacher_log_probs = F.log_softmax(teacher_logits.div_(temperature), dim=-1)
        del teacher_logits
        student_log_probs = F.log_softmax(student_logits.div_(temperature), dim=-1)
        del student_logits
        teacher_probs = teacher_log_probs.exp()
        kl_rows = teacher_log_probs.sub_(student_log_probs).mul_(teacher_probs).sum(-1)
        kd = (kl_rows * valid).sum()
        if with_grad:
            grad = grad.add_(student_log_probs.exp_().sub_(teacher_probs).mul_(kd_weight / temperature * keep))
    return kd, ce, grad


class FusedLinearDistillationLoss(torch.autograd.Function):
    """(kd_weight * KL sum + ce_weight * CE sum, [KL sum, CE sum]) from hidden rows and head weights."""

    @staticmethod
    def forward(ctx, student_hidden, student_weight, teacher_hidden, teacher_weight, targets, valid, temperature,
                kd_weight, ce_weight, chunk_size, student_softcap, teacher_softcap):
        device = student_hidden.device
        compute = _compute_dtype(device, student_hidden, student_weight)
        teacher_compute = None if teacher_hidden is None else _compute_dtype(device, teacher_hidden, teacher_weight)
        grad_dtype = torch.float32 if compute in (torch.float16, torch.float32) else compute
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_grad = need_hidden_grad or need_weight_grad
        with torch.autocast(device.type, enabled=False):
            weight = student_weight.to(compute)  # one cast for all chunks, as autocast's cache makes for lm_head
            weight_for_grad = weight if grad_dtype == compute else student_weight.to(grad_dtype)
            teacher_head = None if teacher_hidden is None else teacher_weight.to(teacher_compute)
            grad_hidden = torch.zeros(student_hidden.shape, dtype=torch.float32, device=device) \
                if need_hidden_grad else None
            grad_weight = torch.zeros(student_weight.shape, dtype=torch.float32, device=device) \
                if need_weight_grad else None
            kd_total = torch.zeros((), dtype=torch.float32, device=device)
            ce_total = torch.zeros((), dtype=torch.float32, device=device)
            for start in range(0, student_hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                hidden = student_hidden[rows]
                student_logits = (hidden.to(compute) @ weight.T).float()
                squashed = None
                if student_softcap:  # s = c tanh(raw / c); d s / d raw = 1 - tanh^2, applied to the gradient below
                    squashed = torch.tanh(student_logits.div_(student_softcap))
                    student_logits = squashed * student_softcap
                teacher_logits = None if teacher_hidden is None else \
                    (teacher_hidden[rows].to(teacher_compute) @ teacher_head.T).float()
                if teacher_logits is not None and teacher_softcap:
                    teacher_logits = torch.tanh(teacher_logits.div_(teacher_softcap)).mul_(teacher_softcap)
                kd, ce, logit_grad = _chunk_terms_and_logit_grad(
                    student_logits, teacher_logits, targets[rows], valid[rows], temperature, kd_weight, ce_weight,
                    with_grad)
                del student_logits, teacher_logits
                kd_total, ce_total = kd_total + kd, ce_total + ce
                if with_grad:
                    if squashed is not None:
                        logit_grad = logit_grad.mul_(squashed.square_().neg_().add_(1))
                    logit_grad = logit_grad.to(grad_dtype)
                    if need_hidden_grad:
                        grad_hidden[rows] = logit_grad @ weight_for_grad
                    if need_weight_grad:
                        grad_weight += logit_grad.T @ hidden.to(grad_dtype)
                del logit_grad, squashed
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.input_dtypes = (student_hidden.dtype, student_weight.dtype)
        sums = torch.stack([kd_total, ce_total])
        ctx.mark_non_differentiable(sums)
        return kd_weight * kd_total + ce_weight * ce_total, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss.float()
        # Scaled in fp32 (fp16 loss scale included) before the cast; in place, as each buffer is used once
        # (a second backward through the same graph is not supported).
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale).to(ctx.input_dtypes[0])
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.input_dtypes[1])
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def fused_distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                            teacher_hidden: torch.Tensor | None, teacher_weight: torch.Tensor | None,
                            targets: torch.Tensor, valid: torch.Tensor, temperature: float,
                            kd_weight: torch.Tensor | float, ce_weight: torch.Tensor | float,
                            chunk_size: int | None = None, student_softcap: float | None = None,
                            teacher_softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kd_weight * KL sum + ce_weight * CE sum, KL sum, CE sum) over the valid positions.

    `student_hidden` is `(..., d)` (the last hidden states, after the final norm), `student_weight` the
    `(vocab, d)` LM-head weight; likewise for the teacher, whose `teacher_hidden=None` leaves the KL out (0).
    `targets` / `valid` have the hidden states' leading shape (position i predicts `targets[i]`). The
    sums are detached (for logging); the first value carries the gradient to the student's hidden states
    and head weight. `chunk_size=None` picks `default_chunk_size`; a softcap c maps that model's logits to
c * tanh(logits / c) (None: no cap).
    """
    vocab, width = student_weight.shape
    if teacher_hidden is not None and teacher_weight.shape[0] != vocab:
        raise ValueError(f"the teacher's LM head has {teacher_weight.shape[0]} outputs and the student's {vocab}: "
                         "distillation needs one vocabulary")
    device = student_hidden.device
    if chunk_size is None or chunk_size <= 0:
        chunk_size = default_chunk_size(device, vocab)
    kd_weight, ce_weight = (torch.as_tensor(w, dtype=torch.float32, device=device) for w in (kd_weight, ce_weight))
    student_rows = student_hidden.reshape(-1, width)
    teacher_rows = None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    loss, sums = FusedLinearDistillationLoss.apply(student_rows, student_weight, teacher_rows, teacher_weight,
                                                   targets.reshape(-1), valid.reshape(-1), temperature, kd_weight,
                                                   ce_weight, chunk_size, student_softcap, teacher_softcap)
    return loss, sums[0], sums[1]


LIGER_REQUIREMENT = "liger-kernel>=0.6.4,<0.9"


def liger_distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                            teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, targets: torch.Tensor,
                            temperature: float, alpha_kd: float, alpha_ce: float, chunk_size: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha_kd * T^2 * mean KL + alpha_ce * mean CE, mean KL, mean CE) through Liger Kernel's fused linear JSD.

    Liger's generalised JSD at beta = 0 is KL(teacher_T || student_T), its "soft" loss without the T^2
    factor (folded into its weight here), its "hard" loss the cross-entropy; both are means over the
    targets that are not -100, which `next_token_targets` sets wherever a position does not count. Its
    chunks are compiled with torch.compile on an accelerator; on CPU it runs eagerly (as the tests do).
    fp16 is refused: Liger keeps the input gradient in the inputs' dtype before the loss scale. bf16 is
    accepted only under CUDA autocast, which runs `log_softmax` in fp32; Liger itself takes the softmaxes
    in the logits' dtype.
    """
    try:
        from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDFunction
    except ImportError:
        raise ValueError(f"kd_loss_backend: liger needs {LIGER_REQUIREMENT} (pip install 'compfair[gpu]')") from None
    device = student_hidden.device
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    low = {t.dtype for t in (student_hidden, student_weight, teacher_hidden, teacher_weight)} - {torch.float32}
    if torch.float16 in low or autocast == torch.float16:
        raise ValueError("kd_loss_backend: liger does not support fp16 (its gradients would underflow before the "
                         "loss scale); use bf16 or kd_loss_backend: torch")
    if (low or autocast is not None) and (autocast is None or device.type == "cpu"):
        # Liger takes the softmaxes in the logits' dtype: only CUDA autocast upcasts log_softmax to fp32. In bf16
        # the KL of two close distributions then loses most of its digits (5x off on the tiny test model).
        raise ValueError("kd_loss_backend: liger needs fp32, or bf16 through CUDA autocast (which takes its "
                         "softmaxes in fp32); elsewhere use kd_loss_backend: torch")
    vocab, width = student_weight.shape
    if chunk_size is None or chunk_size <= 0:
        chunk_size = default_chunk_size(device, vocab)
    loss, soft, hard = LigerFusedLinearJSDFunction.apply(
        student_hidden.reshape(-1, width), student_weight, teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        teacher_weight, targets.reshape(-1), None, None, alpha_ce, alpha_kd * temperature**2, 0.0, IGNORE_INDEX,
        temperature, device.type != "cpu", chunk_size, True)
    return loss, soft.detach(), hard.detach()
