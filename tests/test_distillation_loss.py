"""The distillation loss against an independent computation of its formula, and its chunking."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from compress.distillation.config import DistillationConfig
from compress.distillation.trainer import DistillationTrainer
from compress.models.students import build_student


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.fixture(scope="module")
def models(tiny_gpt2):
    teacher = _no_dropout(AutoModelForCausalLM.from_pretrained(tiny_gpt2))
    student, _ = build_student(teacher, 2)
    torch.manual_seed(0)
    with torch.no_grad():  # move the student away from the teacher so that the KD term is not ~0
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, _no_dropout(student)


def _trainer(teacher, student, tmp_path, **loss_args):
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **loss_args)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args)


def _batch(vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (3, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding
    attention_mask[2, :2] = 0  # left padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, 4] = -100  # an ignored target inside a sequence
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _reference_loss(teacher, student, batch, temperature, alpha_kd, alpha_ce, alpha_cos):
    """The formula written out directly on shifted logits and the kept positions."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s_out = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    targets = batch["labels"][:, 1:]
    keep = (targets != -100) & mask[:, 1:] & mask[:, :-1]
    s, t = s_out.logits[:, :-1][keep], t_out.logits[:, :-1][keep]
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
    ce = F.cross_entropy(s, targets[keep])
    s_h, t_h = s_out.hidden_states[-1][:, :-1][keep], t_out.hidden_states[-1][:, :-1][keep]
    cos = F.cosine_embedding_loss(s_h, t_h, torch.ones(len(s_h)))
    return alpha_kd * kd * temperature**2 + alpha_ce * ce + alpha_cos * cos, ce


@pytest.mark.parametrize("loss_args", [
    {},  # defaults: T = 2, alpha_kd = alpha_ce = 0.5, alpha_cos = 0
    {"temperature": 3.0, "alpha_kd": 0.3, "alpha_ce": 0.6, "alpha_cos": 0.8, "kd_chunk_size": 7},
    {"temperature": 1.0, "alpha_kd": 1.0, "alpha_ce": 0.0, "alpha_cos": 0.0, "kd_chunk_size": 1},
])
def test_loss_equals_the_formula_on_a_fixed_batch(models, tmp_path, loss_args):
    teacher, student = models
    trainer = _trainer(teacher, student, tmp_path, **loss_args)
    config = trainer.args
    batch = _batch(teacher.config.vocab_size)
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    expected, _ = _reference_loss(teacher, student, batch, config.temperature, config.alpha_kd, config.alpha_ce,
                                  config.alpha_cos)
    assert expected.item() > 0.01  # far above the tolerance below
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6), (loss.item(), expected.item())


def test_padding_and_ignored_positions_do_not_change_the_loss(models, tmp_path):
    teacher, student = models
    trainer = _trainer(teacher, student, tmp_path, alpha_cos=0.5)
    batch = _batch(teacher.config.vocab_size)
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1, -3:] = 7  # tokens under padding
    changed["input_ids"][2, :2] = 9
    assert torch.allclose(trainer.compute_loss(student, changed), loss, atol=1e-6)
    unmasked = dict(batch, labels=batch["input_ids"].clone())  # counting the padded positions changes it
    assert not torch.allclose(trainer.compute_loss(student, unmasked), loss, atol=1e-4)


def test_evaluation_loss_is_the_students_cross_entropy(models, tmp_path):
    teacher, student = models
    trainer = _trainer(teacher, student, tmp_path)
    batch = _batch(teacher.config.vocab_size, seed=2)
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
        _, ce = _reference_loss(teacher, student, batch, 2.0, 0.5, 0.5, 0.0)
    assert torch.allclose(loss, ce, rtol=1e-5)


def test_teacher_is_frozen_in_eval_mode_and_training_precision(models, tmp_path):
    teacher, student = models
    trainer = _trainer(teacher, student, tmp_path)
    assert not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    bf16 = _trainer(AutoModelForCausalLM.from_pretrained(teacher.name_or_path), student, tmp_path, bf16=True)
    assert next(bf16.teacher.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(("loss_args", "message"), [
    ({"temperature": 0.0}, "temperature must be positive"),
    ({"alpha_kd": -0.1}, "alpha_kd must be >= 0"),
    ({"alpha_kd": 0.0, "alpha_ce": 0.0, "alpha_cos": 0.0}, "nothing to train on"),
    ({"kd_chunk_size": 0}, "kd_chunk_size must be >= 1"),
])
def test_bad_loss_settings_are_refused(tmp_path, loss_args, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(output_dir=str(tmp_path), use_cpu=True, **loss_args)
