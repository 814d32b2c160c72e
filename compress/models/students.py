"""Student construction for distillation: a shallower copy of a causal LM teacher.

A student keeps the teacher's width, vocabulary and everything around the stack of decoder blocks
(embeddings, final layer norm, LM head) and has fewer blocks. Initialised from the teacher, it
copies those outer weights and a chosen subset of the teacher's blocks, as DistilBERT and
DistilGPT2 do; otherwise it is a randomly initialised model of the same shape (the paper's
"not initialised" students).
"""

from __future__ import annotations

import copy
import math
import re

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

LAYER_SELECTIONS = ("uniform", "first", "last")

# The index of a decoder block inside a parameter name: GPT-2 `transformer.h.3.`, Llama/NeoX `layers.3.`.
_BLOCK_KEY = re.compile(r"^(.*?\.(?:h|layers|blocks)\.)(\d+)(\..*)$")


def parse_layer_selection(selection: str | list[int] | tuple[int, ...]) -> str | list[int]:
    """`uniform`, `first`, `last`, a list of block indices, or the same list as text (`0,2,4` or `[0, 2, 4]`)."""
    if isinstance(selection, (list, tuple)):
        indices = list(selection)
    elif isinstance(selection, str) and selection.strip().lower() in LAYER_SELECTIONS:
        return selection.strip().lower()
    elif isinstance(selection, str):
        text = selection.strip().strip("[]")
        try:
            indices = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"layer_selection must be one of {', '.join(LAYER_SELECTIONS)} or a list of block "
                             f"indices like 0,2,4; got {selection!r}") from None
    else:
        raise ValueError(f"layer_selection must be a string or a list of ints, got {type(selection).__name__}")
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"layer_selection must list at least one integer block index, got {selection!r}")
    return indices


def select_layers(teacher_layers: int, student_layers: int, selection: str | list[int] = "uniform") -> list[int]:
    """Indices of the teacher blocks a student of `student_layers` blocks starts from.

    `uniform` spreads the blocks evenly and always keeps the first and the last, rounding half up:
    6 of 12 gives DistilGPT2's [0, 2, 4, 7, 9, 11].
    """
    if student_layers < 1:
        raise ValueError(f"student_layers must be at least 1, got {student_layers}")
    if student_layers > teacher_layers:
        raise ValueError(f"the student ({student_layers} blocks) cannot be deeper than the teacher "
                         f"({teacher_layers} blocks)")
    selection = parse_layer_selection(selection)
    if selection == "first":
        return list(range(student_layers))
    if selection == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if selection == "uniform":
        if student_layers == 1:
            return [0]
        step = (teacher_layers - 1) / (student_layers - 1)
        return [math.floor(i * step + 0.5) for i in range(student_layers)]
    if len(selection) != student_layers:
        raise ValueError(f"layer_selection lists {len(selection)} blocks {selection} but student_layers is "
                         f"{student_layers}")
    bad = [i for i in selection if not 0 <= i < teacher_layers]
    if bad:
        raise ValueError(f"layer index {bad[0]} is out of range: the teacher has blocks 0..{teacher_layers - 1}")
    if len(set(selection)) != len(selection):
        raise ValueError(f"layer_selection repeats a block: {selection}")
    return selection


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings and LM head count once)."""
    return sum(p.numel() for p in model.parameters())


# Config fields that hold one entry per decoder block: a student keeps its blocks' entries.
PER_BLOCK_FIELDS = ("layer_types",)


def student_config(teacher_config, kept: list[int]):
    """The teacher's config for a stack of the teacher blocks `kept`.

    Besides the block count, per-block fields follow the blocks: Qwen2/3, Mistral and Gemma 2/3 list each
    block's attention type (`layer_types`: sliding-window or full), which the config requires to match
    the count. Everything else (Gemma's norms, softcapping, tied embeddings, head_dim) is the teacher's.
    """
    config = copy.deepcopy(teacher_config)
    values = {name: getattr(config, name) for name in PER_BLOCK_FIELDS if getattr(config, name, None) is not None}
    for name, per_block in values.items():
        object.__setattr__(config, name, [per_block[i] for i in kept])
    config.num_hidden_layers = len(kept)
    return config


def build_student(teacher: PreTrainedModel, student_layers: int, init_from_teacher: bool = True,
                  layer_selection: str | list[int] = "uniform") -> tuple[PreTrainedModel, list[int] | None]:
    """A student with `student_layers` blocks and the kept teacher block indices (None for random init).

    The student is built from the teacher's config with fewer blocks, so it loads and runs as the same
    architecture (`AutoModelForCausalLM.from_pretrained`, lm-eval's `hf` model). Random initialisation
    follows the global torch seed: set it first (`transformers.set_seed`) so every process builds the same
    student.
    """
    teacher_layers = teacher.config.num_hidden_layers
    kept = select_layers(teacher_layers, student_layers, layer_selection)  # validates depth even for random init
    config = student_config(teacher.config, kept)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if not init_from_teacher:
        return student, None

    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = _BLOCK_KEY.match(key)
        source = f"{match[1]}{kept[int(match[2])]}{match[3]}" if match else key
        state[key] = teacher_state[source].detach().to(torch.float32)
    student.load_state_dict(state, strict=True)
    return student, kept
