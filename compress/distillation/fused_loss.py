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

IGNORE_INDEX = -100


def default_chunk_size(device: torch.device, vocab_size: int) -> int:
    """Positions per chunk: as many as fit 128 MiB of fp32 logits on CPU, 256 MiB (at most 1024 rows) elsewhere.

    A chunk's logit buffers are made once per loss call and reused by every chunk (`_ChunkBuffers`, about
    five such buffers), so the size trades memory against the per-chunk costs: each chunk reads the whole
    head weight twice and adds its gradient (vocabulary x width) once. On CPU, 128 MiB is 667 rows of
    GPT-2's vocabulary and 261 of Llama 3's; at 128k, 65-row chunks measured 2.5x slower and 130-row ones
    1.3x slower than 520-row ones.
    """
    budget = 128 << 20 if device.type == "cpu" else 256 << 20
    rows = max(1, budget // (4 * vocab_size))
    return rows if device.type == "cpu" else min(1024, rows)


def _compute_dtype(device: torch.device, *tensors: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.result_type(*tensors) if len(tensors) > 1 else tensors[0].dtype


class _ChunkBuffers:
    """The logit-sized buffers of one chunk, made once per loss call and reused by every chunk.

    Fresh buffers per chunk would cost more than the arithmetic on them: on CPU, allocations above glibc's
    mmap threshold are returned to the OS when freed, so each chunk would fault all of their pages in again.
    Every op writes into one of these (`out=` or in place), and all the elementwise work is done in fp32
    buffers: on CPU an op that reads bf16 and writes fp32 is two to three times slower than a copy followed
    by the fp32 op. Four fp32 buffers (five with a softcap) and one in each matmul dtype: the teacher's
    logits go into the student's logit buffer once the student's are used up.
    """

    def __init__(self, rows: int, vocab: int, width: int, device: torch.device, grad_dtype: torch.dtype,
                 with_teacher: bool, with_grad: bool, softcap: bool):
        self.shape, self.device = (rows, vocab), device

        def fp32():
            return torch.empty(self.shape, dtype=torch.float32, device=device)

        self.logits = fp32()  # the student's logits, then the teacher's, then q_T
        self.probs = fp32()  # the student's log-probabilities, then probabilities, then the logit gradient
        self.squashed = fp32() if softcap else None
        self.student_t = fp32() if with_teacher else None  # log p_T, then p_T - q_T
        self.teacher_t = fp32() if with_teacher else None  # log q_T, then the KL terms
        self._low: dict[torch.dtype, torch.Tensor] = {}
        self.weight_grad = self.weight_grad_fp32 = None
        if with_grad and grad_dtype != torch.float32:
            self.weight_grad = torch.empty(vocab, width, dtype=grad_dtype, device=device)
            # On CPU an fp32 += bf16 add casts into a fresh fp32 tensor (paged in anew each chunk) and runs
            # about 1.8x slower than a copy into this buffer and an fp32 add; CUDA casts inside the add.
            if device.type == "cpu":
                self.weight_grad_fp32 = torch.empty(vocab, width, dtype=torch.float32, device=device)

    def low(self, dtype: torch.dtype, rows: int) -> torch.Tensor:
        """The chunk buffer in a matmul dtype (bf16 / fp16 logits and logit gradients)."""
        if dtype not in self._low:
            self._low[dtype] = torch.empty(self.shape, dtype=dtype, device=self.device)
        return self._low[dtype][:rows]


def _logits_into(buffers: _ChunkBuffers, rows: int, hidden: torch.Tensor, weight: torch.Tensor,
                 softcap: float | None) -> torch.Tensor:
    """hidden @ weight.T in the weight's dtype (as an autocast lm_head makes it), as fp32 in `buffers.logits`,
    passed through c * tanh(. / c) where the model caps its logits."""
    out = buffers.logits[:rows]
    if weight.dtype == torch.float32:
        torch.mm(hidden, weight.T, out=out)
    else:
        out.copy_(torch.mm(hidden, weight.T, out=buffers.low(weight.dtype, rows)))
    return out.div_(softcap).tanh_().mul_(softcap) if softcap else out


def _student_terms(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                   ce_weight: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CE sum and ce_weight * d CE / d s = ce_weight * (softmax(s) - onehot(y)) (into `probs`), for one chunk.

    The probabilities are the exp of the log_softmax, as autograd's log_softmax backward makes them.
    """
    safe_targets = targets.clamp(min=0).unsqueeze(1)  # ignored rows are masked by `valid`
    log_probs = torch.log_softmax(logits, -1, out=probs)
    ce = -(log_probs.gather(1, safe_targets).squeeze(1) * valid).sum()
    if not with_grad:
        return ce, None
    ce_scale = ce_weight * valid.unsqueeze(1)
    return ce, log_probs.exp_().mul_(ce_scale).scatter_add_(1, safe_targets, -ce_scale)


def _kd_terms(teacher_logits: torch.Tensor, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor,
              grad: torch.Tensor | None, valid: torch.Tensor, temperature: float, kd_weight: torch.Tensor
              ) -> torch.Tensor:
    """KL(q_T || p_T) sum for one chunk; adds kd_weight * d KL / d s = kd_weight * (p_T - q_T) / T to `grad`.

    `student_log_probs` holds log p_T, `teacher_log_probs` is a free buffer; all three are overwritten.
    """
    torch.log_softmax(teacher_logits.div_(temperature), -1, out=teacher_log_probs)
    teacher_probs = torch.exp(teacher_log_probs, out=teacher_logits)
    kl_terms = teacher_log_probs.sub_(student_log_probs).mul_(teacher_probs)
    kd = (kl_terms.sum(-1) * valid).sum()
    if grad is not None:
        grad.addcmul_(student_log_probs.exp_().sub_(teacher_probs), kd_weight / temperature * valid.unsqueeze(1))
    return kd


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
        positions, (vocab, width) = student_hidden.shape[0], student_weight.shape
        with torch.autocast(device.type, enabled=False):
            weight = student_weight.to(compute)  # one cast for all chunks, as autocast's cache makes for lm_head
            weight_for_grad = weight if grad_dtype == compute else student_weight.to(grad_dtype)
            teacher_head = None if teacher_hidden is None else teacher_weight.to(teacher_compute)
            buffers = _ChunkBuffers(min(chunk_size, positions), vocab, width, device, grad_dtype,
                                    teacher_hidden is not None, with_grad, bool(student_softcap))
            grad_hidden = torch.zeros(student_hidden.shape, dtype=torch.float32, device=device) \
                if need_hidden_grad else None
            grad_weight = torch.zeros(student_weight.shape, dtype=torch.float32, device=device) \
                if need_weight_grad else None
            kd_total = torch.zeros((), dtype=torch.float32, device=device)
            ce_total = torch.zeros((), dtype=torch.float32, device=device)
            for start in range(0, positions, chunk_size):
                rows = slice(start, start + chunk_size)
                count = min(chunk_size, positions - start)
                hidden = student_hidden[rows].to(compute)
                student_logits = _logits_into(buffers, count, hidden, weight, None)
                squashed = None
                if student_softcap:  # s = c tanh(raw / c); d s / d raw = 1 - tanh^2, applied to the gradient below
                    squashed = torch.tanh(student_logits.div_(student_softcap), out=buffers.squashed[:count])
                    student_logits = torch.mul(squashed, student_softcap, out=student_logits)
                ce, logit_grad = _student_terms(student_logits, buffers.probs[:count], targets[rows], valid[rows],
                                                ce_weight, with_grad)
                ce_total = ce_total + ce
                if teacher_hidden is not None:
                    student_log_probs = torch.log_softmax(student_logits.div_(temperature), -1,
                                                          out=buffers.student_t[:count])
                    teacher_logits = _logits_into(buffers, count, teacher_hidden[rows].to(teacher_compute),
                                                  teacher_head, teacher_softcap)  # into the student's, used up
                    kd_total = kd_total + _kd_terms(teacher_logits, student_log_probs, buffers.teacher_t[:count],
                                                    logit_grad, valid[rows], temperature, kd_weight)
                if with_grad:
                    if squashed is not None:
                        logit_grad = logit_grad.mul_(squashed.square_().neg_().add_(1))
                    if grad_dtype != torch.float32:
                        logit_grad = buffers.low(grad_dtype, count).copy_(logit_grad)
                    if need_hidden_grad:
                        grad_hidden[rows] = logit_grad @ weight_for_grad
                    if need_weight_grad:
                        hidden_for_grad = hidden.to(grad_dtype)
                        if buffers.weight_grad is None:  # fp32: accumulate in place
                            grad_weight.addmm_(logit_grad.T, hidden_for_grad)
                        else:
                            part = torch.mm(logit_grad.T, hidden_for_grad, out=buffers.weight_grad)
                            grad_weight += part if buffers.weight_grad_fp32 is None else \
                                buffers.weight_grad_fp32.copy_(part)
        del buffers
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
