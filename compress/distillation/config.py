"""Arguments of a distillation run: which student to build, and how to train it.

Parsed with `HfArgumentParser` from a YAML file plus `--field value` flags (`compress/common/arguments.py`),
together with `compress.common.lm_data.DataArguments`. Field names follow `run_clm.py` where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from compress.models.students import parse_layer_selection


@dataclass
class StudentArguments:
    teacher_name_or_path: str = field(
        default="gpt2", metadata={"help": "Teacher checkpoint: a hub name (gpt2) or a local folder."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; default: the teacher's. It must equal the teacher's."})
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretrained student to distil into instead of building one from the "
                                        "teacher (student_layers, init_from_teacher and layer_selection are then "
                                        "unused); it must use the teacher's tokenizer (its embedding rows may differ "
                                        "by padding)."})
    student_layers: int = field(default=6, metadata={"help": "Decoder blocks of the student."})
    init_from_teacher: bool = field(
        default=True, metadata={"help": "Copy embeddings, final norm, head and the selected teacher blocks; "
                                        "false: random initialisation of the same shape."})
    layer_selection: str = field(
        default="uniform", metadata={"help": "Teacher blocks to copy: uniform | first | last | explicit indices "
                                             "(0,2,4,7,9,11 on the command line, a list in YAML)."})

    def __post_init__(self):
        if self.student_layers < 1:
            raise ValueError(f"student_layers must be at least 1, got {self.student_layers}")
        self.layer_selection = parse_layer_selection(self.layer_selection)


@dataclass
class DistillationConfig(TrainingArguments):
    """`TrainingArguments` plus the distillation loss:

    loss = alpha_kd * KL(softmax(teacher / T) || softmax(student / T)) * T^2
         + alpha_ce * next-token cross-entropy
         + alpha_cos * (1 - cosine(student hidden, teacher hidden))

    (DistilBERT / DistilGPT2), each term averaged over the predicted positions.

    Names: DistilBERT's `train.py` (huggingface/transformers examples/research_projects/distillation) calls
    the KD term `alpha_ce` and the next-token (causal LM) term `alpha_clm`, its MLM term `alpha_mlm`, its
    cosine term `alpha_cos`. Here the KD term is `alpha_kd` and the next-token term `alpha_ce`, so a
    published recipe maps as  DistilBERT alpha_ce -> alpha_kd,  alpha_clm -> alpha_ce,  alpha_cos -> alpha_cos
    (`--alpha_ce 5.0 --alpha_clm 2.0 --alpha_cos 1.0` there is `alpha_kd: 5.0, alpha_ce: 2.0, alpha_cos: 1.0`
    here; its KD term is also a per-position mean times T^2); copying `alpha_ce` across unchanged swaps the
    weights of the two terms.
    """

    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the KD term."})
    alpha_kd: float = field(default=0.5, metadata={
        "help": "Weight of the KL term (multiplied by T^2); DistilBERT/DistilGPT2's train.py calls it alpha_ce."})
    alpha_ce: float = field(default=0.5, metadata={
        "help": "Weight of the student's next-token cross-entropy; DistilBERT/DistilGPT2's train.py calls it "
                "alpha_clm (its alpha_ce is our alpha_kd)."})
    alpha_cos: float = field(
        default=0.0, metadata={"help": "Weight of the cosine loss between last hidden states (0 skips it); the same "
                                       "name in DistilBERT's train.py."})
    kd_chunk_size: int | None = field(
        default=None, metadata={"help": "Token positions per chunk of the fused KD/CE loss (both models' logits are "
                                        "made only a chunk at a time, from the hidden states and LM heads); default: "
                                        "on CPU as fit 128 MiB of fp32 logits, on GPU up to 1024 within 256 MiB."})
    kd_loss_backend: str = field(
        default="torch", metadata={"help": "torch: the fused loss in plain PyTorch (fused_loss.py, the tested default);"
                                           " liger: Liger Kernel's fused linear JSD at beta 0, the same loss, compiled "
                                           "on GPU (pip install 'compfair[gpu]'; not with fp16)."})

    def __post_init__(self):
        if self.kd_loss_backend not in ("torch", "liger"):
            raise ValueError(f"kd_loss_backend must be torch or liger, got {self.kd_loss_backend!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        weights = {"alpha_kd": self.alpha_kd, "alpha_ce": self.alpha_ce, "alpha_cos": self.alpha_cos}
        negative = [name for name, value in weights.items() if value < 0]
        if negative:
            raise ValueError(f"{negative[0]} must be >= 0, got {weights[negative[0]]}")
        if not any(weights.values()):
            raise ValueError("alpha_kd, alpha_ce and alpha_cos are all 0: there is nothing to train on")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be >= 1 (or unset for the default), got {self.kd_chunk_size}")
        super().__post_init__()
