"""Student construction: which teacher blocks a student keeps, and that it copies them exactly."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from compress.models.students import build_student, count_parameters, parse_layer_selection, select_layers


def test_uniform_selection_matches_distilgpt2_and_keeps_both_ends():
    assert select_layers(12, 6, "uniform") == [0, 2, 4, 7, 9, 11]
    for n in (1, 2, 4, 8, 10, 12):
        kept = select_layers(12, n, "uniform")
        assert len(kept) == len(set(kept)) == n and kept == sorted(kept)
        assert kept[0] == 0 and (n == 1 or kept[-1] == 11)
    assert select_layers(12, 12, "uniform") == list(range(12))


def test_first_last_and_explicit_selection():
    assert select_layers(12, 4, "first") == [0, 1, 2, 3]
    assert select_layers(12, 4, "last") == [8, 9, 10, 11]
    assert select_layers(12, 3, [1, 5, 10]) == [1, 5, 10]
    assert select_layers(12, 3, "1,5,10") == [1, 5, 10]
    assert parse_layer_selection("[0, 2]") == [0, 2] and parse_layer_selection(" Uniform ") == "uniform"


@pytest.mark.parametrize(("teacher", "student", "selection", "message"), [
    (12, 14, "uniform", "cannot be deeper than the teacher"),
    (12, 0, "uniform", "at least 1"),
    (12, 3, [0, 5, 12], "layer index 12 is out of range"),
    (12, 3, [0, -1, 4], "layer index -1 is out of range"),
    (12, 3, [0, 5], "lists 2 blocks"),
    (12, 3, [0, 5, 5], "repeats a block"),
    (12, 3, "middle", "must be one of uniform, first, last"),
])
def test_bad_selection_is_a_clear_error(teacher, student, selection, message):
    with pytest.raises(ValueError, match=message):
        select_layers(teacher, student, selection)


@pytest.fixture(scope="module")
def teacher12(tiny_checkpoint):
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gpt2", n_layer=12, n_head=4))


def test_student_copies_outer_weights_and_selected_blocks_bit_for_bit(teacher12):
    student, kept = build_student(teacher12, 6, init_from_teacher=True, layer_selection="uniform")
    assert kept == [0, 2, 4, 7, 9, 11]
    assert student.config.n_layer == 6 and len(student.transformer.h) == 6
    assert student.config.n_embd == teacher12.config.n_embd and student.config.vocab_size == teacher12.config.vocab_size
    for i, t in enumerate(kept):
        student_block, teacher_block = student.transformer.h[i].state_dict(), teacher12.transformer.h[t].state_dict()
        assert student_block.keys() == teacher_block.keys()
        for name, value in student_block.items():
            assert torch.equal(value, teacher_block[name]), (i, t, name)
    for name in ("wte", "wpe", "ln_f"):
        for key, value in getattr(student.transformer, name).state_dict().items():
            assert torch.equal(value, getattr(teacher12.transformer, name).state_dict()[key])
    assert torch.equal(student.lm_head.weight, teacher12.lm_head.weight)
    # Different blocks really were chosen: block 1 of the student is teacher block 2, not teacher block 1.
    assert not torch.equal(student.transformer.h[1].attn.c_attn.weight, teacher12.transformer.h[1].attn.c_attn.weight)
    # The copy is independent of the teacher.
    with torch.no_grad():
        student.transformer.h[0].ln_1.weight.add_(1.0)
    assert not torch.equal(student.transformer.h[0].ln_1.weight, teacher12.transformer.h[0].ln_1.weight)


def test_student_from_teacher_blocks_reproduces_the_teacher_when_it_keeps_them_all(teacher12):
    student, _ = build_student(teacher12, 12, layer_selection="first")
    ids = torch.randint(0, teacher12.config.vocab_size, (2, 9))
    teacher12.eval(), student.eval()
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, teacher12(ids).logits)


def test_random_student_has_the_same_shape_and_fresh_weights(teacher12):
    torch.manual_seed(3)
    student, kept = build_student(teacher12, 6, init_from_teacher=False)
    torch.manual_seed(3)
    again, _ = build_student(teacher12, 6, init_from_teacher=False)
    assert kept is None
    assert student.config.n_layer == 6
    copied, _ = build_student(teacher12, 6)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in copied.state_dict().items()}
    assert not torch.equal(student.transformer.wte.weight, teacher12.transformer.wte.weight)
    assert not torch.equal(student.transformer.h[0].attn.c_attn.weight, teacher12.transformer.h[0].attn.c_attn.weight)
    for key, value in student.state_dict().items():  # same seed, same student: every process agrees
        assert torch.equal(value, again.state_dict()[key]), key


def test_parameter_counts_shrink_with_depth(teacher12):
    small, _ = build_student(teacher12, 4)
    large, _ = build_student(teacher12, 8)
    per_block = count_parameters(teacher12.transformer.h[0])
    assert count_parameters(large) - count_parameters(small) == 4 * per_block
    assert count_parameters(teacher12) - count_parameters(large) == 4 * per_block


def test_student_deeper_than_teacher_is_refused(teacher12):
    with pytest.raises(ValueError, match="cannot be deeper"):
        build_student(teacher12, 13)
    with pytest.raises(ValueError, match="cannot be deeper"):
        build_student(teacher12, 13, init_from_teacher=False)
