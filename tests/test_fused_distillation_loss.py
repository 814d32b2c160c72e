"""The fused linear + KD/CE loss against autograd on the full logits: value, gradients, precision, chunking."""

import pytest
import torch
import torch.nn.functional as F

from compress.distillation.fused_loss import default_chunk_size, fused_distillation_loss
from compress.distillation.trainer import next_token_targets


def _problem(vocab=50, width=16, teacher_width=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, width, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) / width**0.5).to(dtype).requires_grad_()
    teacher_hidden = torch.randn(3, 11, teacher_width, generator=g).to(dtype)
    teacher_weight = (torch.randn(vocab, teacher_width, generator=g) / teacher_width**0.5).to(dtype)
    labels = torch.randint(0, vocab, (3, 11), generator=g)
    labels[1, 5] = -100  # an ignored label inside a sequence
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[2, -4:] = 0  # right padding
    targets, valid = next_token_targets(labels, mask)
    return hidden, weight, teacher_hidden, teacher_weight, targets, valid


def _reference(hidden, weight, teacher_hidden, teacher_weight, targets, valid, temperature, kd_weight, ce_weight,
               matmul_dtype=torch.float32):
    """The definition on full logits (made in `matmul_dtype`, as an autocast lm_head would), losses in fp32."""
    keep = valid.reshape(-1)
    student = (hidden.to(matmul_dtype) @ weight.to(matmul_dtype).T).float().reshape(-1, weight.shape[0])[keep]
    ce = F.cross_entropy(student, targets.reshape(-1)[keep], reduction="sum")
    if teacher_hidden is None:
        return ce_weight * ce, ce.new_zeros(()), ce
    teacher = (teacher_hidden.to(matmul_dtype) @ teacher_weight.to(matmul_dtype).T).float()
    teacher = teacher.reshape(-1, weight.shape[0])[keep]
    kd = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1), reduction="sum")
    return kd_weight * kd + ce_weight * ce, kd, ce


def _relative_error(value, expected):
    return ((value.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@pytest.mark.parametrize("with_teacher", [True, False])
def test_fused_loss_and_gradients_equal_autograd_on_the_full_logits(with_teacher):
    hidden, weight, teacher_hidden, teacher_weight, targets, valid = _problem()
    if not with_teacher:
        teacher_hidden = None
    assert valid.sum() == 3 * 10 - 1 - 4  # last position of each row, the ignored label, the padding
    expected, expected_kd, expected_ce = _reference(hidden, weight, teacher_hidden, teacher_weight, targets, valid,
                                                    2.0, 0.3, 0.7)
    expected_grads = torch.autograd.grad(expected * 1.5, (hidden, weight))
    assert expected_ce > 0 and (expected_kd > 0) == with_teacher
    # Chunks of one row, chunks that end mid-sequence, one chunk larger than the batch, the default; with 13 and
    # 20 the last, shorter chunk holds positions that count (rows 26-27, 20-27), so the reused chunk buffers
    # must hold its own rows, not the previous chunk's.
    assert valid.reshape(-1)[26:].any() and valid.reshape(-1)[20:].any()
    for chunk in (1, 4, 5, 13, 20, 33, 1000, None):
        loss, kd, ce = fused_distillation_loss(hidden, weight, teacher_hidden, teacher_weight, targets, valid, 2.0,
                                               0.3, 0.7, chunk)
        grads = torch.autograd.grad(loss * 1.5, (hidden, weight))  # 1.5: the incoming gradient is applied
        for value, reference in ((loss, expected), (kd, expected_kd), (ce, expected_ce)):
            assert torch.allclose(value, reference, rtol=1e-5, atol=1e-5), (chunk, value, reference)
        for grad, reference in zip(grads, expected_grads):
            assert grad.dtype == torch.float32 and _relative_error(grad, reference) < 1e-5, chunk
        # Positions that do not count get no gradient.
        assert torch.count_nonzero(grads[0][2, -4:]) == 0 and torch.count_nonzero(grads[0][:, -1]) == 0


def test_bf16_autocast_matches_autograd_within_bf16_tolerance():
    hidden, weight, teacher_hidden, teacher_weight, targets, valid = _problem(vocab=300, width=32, teacher_width=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_distillation_loss(hidden, weight, teacher_hidden.bfloat16(), teacher_weight.bfloat16(),
                                             targets, valid, 2.0, 0.5, 0.5, 7)
    grads = torch.autograd.grad(loss, (hidden, weight))
    expected, _, _ = _reference(hidden, weight, teacher_hidden, teacher_weight, targets, valid, 2.0, 0.5, 0.5,
                                matmul_dtype=torch.bfloat16)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    fp32_logits, _, _ = _reference(hidden, weight, teacher_hidden, teacher_weight, targets, valid, 2.0, 0.5, 0.5)
    assert loss.dtype == torch.float32
    # The same bf16 logits as an autocast lm_head makes, the same fp32 loss on them (fp32 logits: 6e-5 off).
    assert torch.allclose(loss, expected, rtol=1e-6) and not torch.allclose(fp32_logits, expected, rtol=1e-5)
    for grad, reference, master in zip(grads, expected_grads, (hidden, weight)):
        assert grad.dtype == master.dtype == torch.float32
        assert _relative_error(grad, reference) < 2e-2  # bf16 gradient matmuls: a few bf16 ulps


def test_fp16_gradients_do_not_underflow_before_the_loss_scale():
    """DeepSpeed-style fp16: model (hidden states, head) in fp16, the loss scaled by 1024 before backward.

    With 1,024 positions and 16,384 tokens the entries of the gradient of the mean loss with respect to
    the logits are about 0.5 / (1024 * 16384) = 3e-8, below fp16's smallest subnormal (6e-8).
    """
    positions, vocab, width = 1024, 16384, 32
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(positions, width, generator=g).half().requires_grad_()
    # LM-head rows share a common direction (as trained embeddings do), so the many small softmax entries
    # add up to a large part of the gradient: losing them changes it.
    common = torch.randn(width, generator=g)
    weight = ((torch.randn(vocab, width, generator=g) + common) / width**0.5).half().requires_grad_()
    teacher_hidden = torch.randn(positions, width, generator=g).half()
    teacher_weight = ((torch.randn(vocab, width, generator=g) + common) / width**0.5).half()
    targets = torch.randint(0, vocab, (positions,), generator=g)
    valid = torch.ones(positions, dtype=torch.bool)
    weights = (2.0**2 * 0.5 / positions, 0.5 / positions)
    loss_scale = 1024.0
    loss, _, _ = fused_distillation_loss(hidden, weight, teacher_hidden, teacher_weight, targets, valid, 2.0,
                                         *weights, 512)
    grads = torch.autograd.grad(loss * loss_scale, (hidden, weight))
    # The definition in fp32 on the same fp16 inputs, the loss scale applied in fp32.
    master = [t.detach().float().requires_grad_() for t in (hidden, weight)]
    expected, _, _ = _reference(master[0], master[1], teacher_hidden.float(), teacher_weight.float(), targets, valid,
                                2.0, *weights, matmul_dtype=torch.float16)
    expected_grads = torch.autograd.grad(expected * loss_scale, master)
    # The CE part of the logit gradient, softmax * weight, would be zero in fp16 for most entries.
    ce_logit_grad = F.softmax((master[0] @ master[1].T).float(), -1) * weights[1]
    assert (ce_logit_grad.half() == 0).float().mean() > 0.6  # 69% here
    for grad, reference in zip(grads, expected_grads):
        assert grad.dtype == torch.float16 and torch.isfinite(grad).all()
        assert _relative_error(grad, reference) < 3e-3, _relative_error(grad, reference)  # with fp16 buffers: 1e-2


def test_default_chunk_keeps_cpu_chunks_within_128_mib_and_gpu_chunks_within_256_mib():
    rows = default_chunk_size(torch.device("cpu"), 50257)
    assert rows * 50257 * 4 <= 128 << 20 < (rows + 1) * 50257 * 4 and rows == 667
    assert default_chunk_size(torch.device("cpu"), 10**9) == 1
    assert default_chunk_size(torch.device("cuda"), 50257) == 1024
    assert default_chunk_size(torch.device("cuda"), 128256) == (256 << 20) // (4 * 128256) == 523


def test_different_vocabularies_are_refused():
    hidden, weight, teacher_hidden, _, targets, valid = _problem()
    with pytest.raises(ValueError, match="needs one vocabulary"):
        fused_distillation_loss(hidden, weight, teacher_hidden, torch.randn(51, 12), targets, valid, 2.0, 0.5, 0.5)


def test_softcapped_logits_as_gemma2_caps_them():
    """Gemma 2's final_logit_softcapping: both models' logits are c * tanh(raw / c); loss and gradients against
    autograd through the capped full logits (a cap small enough that tanh bends: |raw| reaches about 3c)."""
    hidden, weight, teacher_hidden, teacher_weight, targets, valid = _problem()
    hidden_big = (hidden * 4).detach().requires_grad_()

    def capped(h, w, c):
        return c * torch.tanh((h @ w.T) / c)

    keep = valid.reshape(-1)
    student = capped(hidden_big, weight, 1.5).reshape(-1, 50)[keep]
    teacher = capped(teacher_hidden * 4, teacher_weight, 2.5).reshape(-1, 50)[keep]
    assert (hidden_big @ weight.T).abs().max() > 3 * 1.5  # the cap really bends the logits
    ce = F.cross_entropy(student, targets.reshape(-1)[keep], reduction="sum")
    kd = F.kl_div(F.log_softmax(student / 2.0, -1), F.softmax(teacher / 2.0, -1), reduction="sum")
    expected = 0.3 * kd + 0.7 * ce
    expected_grads = torch.autograd.grad(expected, (hidden_big, weight))
    for chunk in (4, None):
        loss, _, _ = fused_distillation_loss(hidden_big, weight, teacher_hidden * 4, teacher_weight, targets, valid,
                                             2.0, 0.3, 0.7, chunk, student_softcap=1.5, teacher_softcap=2.5)
        grads = torch.autograd.grad(loss, (hidden_big, weight))
        assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5)
        for grad, reference in zip(grads, expected_grads, strict=True):
            assert _relative_error(grad, reference) < 1e-5
