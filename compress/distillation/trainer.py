"""`DistillationTrainer`: a Hugging Face `Trainer` whose loss distils a frozen teacher into the student.

    loss = alpha_kd * KL(softmax(teacher / T) || softmax(student / T)) * T^2
         + alpha_ce * next-token cross-entropy
         + alpha_cos * (1 - cosine(student last hidden state, teacher last hidden state))

Every term is a mean over the predicted positions: a position counts when its next token is a label
(not -100) and both it and the next token are real tokens (attention mask 1). Everything else about
training (optimiser, schedule, mixed precision, DDP/FSDP/DeepSpeed, checkpoints, resuming with the
same data order) is the Trainer's.

Neither model's logits are ever made for the whole batch: the student runs through its prepared forward
(DDP, autocast) with `logits_to_keep` set to no position, a forward hook on its decoder keeps the last
hidden states, the teacher runs its decoder alone, and `fused_loss.fused_distillation_loss` computes the
KD and CE terms from the hidden states and the two LM-head weights a chunk of positions at a time.

Evaluation measures the student alone: `eval_loss` is its next-token cross-entropy, so
`eval_perplexity = exp(eval_loss)` (logged with it) is the usual perplexity and the best checkpoint is
the one that models the validation text best. Loss-only evaluation (`evaluate()` without
`compute_metrics`) never makes the student's logits either; when predictions are asked for
(`compute_metrics` set, or `predict()` with `prediction_loss_only` false) the student's forward makes
its full logits and `prediction_step` returns them, as the stock Trainer does, the loss still computed
by the fused loss from the hidden states.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedModel, Trainer

from compress.distillation.config import DistillationConfig
from compress.distillation.fused_loss import IGNORE_INDEX, fused_distillation_loss, liger_distillation_loss

# Config fields with which logits are not `hidden @ head.weight.T`: the fused loss would compute other numbers.
# Logit transforms the fused loss does not apply (Gemma 2's `final_logit_softcapping` it does: `logit_softcap`).
_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier")


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


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, valid: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over the valid positions (DistilBERT's cosine embedding loss)."""
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return ((1 - cosine) * valid).sum() / valid.sum().clamp(min=1)


def shared_vocabulary_rows(student_weight: torch.Tensor, teacher_weight: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' LM-head weights over the vocabulary rows they share.

    A teacher and a student with one tokenizer may still have embedding matrices of different sizes, padded
    past the tokenizer to a round number (Qwen2.5: 151,936 rows in the small models, 152,064 in 7B and
    up). No token maps to a padding row, so the loss compares the two over their common rows (every real
    token is among them: `compress/distill.py` checks the tokenizer fits both) and ignores the rest.
    """
    if student_weight.shape[0] == teacher_weight.shape[0]:
        return student_weight, teacher_weight
    rows = min(student_weight.shape[0], teacher_weight.shape[0])
    return student_weight[:rows], teacher_weight[:rows]


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / DeepSpeed / torch.compile and PEFT wrappers."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_fused_head(model: torch.nn.Module, who: str) -> None:
    """Refuses, in one line, a model whose logits the fused loss cannot compute as `hidden @ head.weight.T`."""
    base = _base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"the {who} ({type(base).__name__}) has no LM head (get_output_embeddings() is None)")
    if type(head).__module__.startswith("peft") or hasattr(head, "base_layer"):
        raise ValueError(f"the {who}'s LM head carries a PEFT adapter or wrapper ({type(head).__name__}), which the "
                         "fused distillation loss reads around; leave lm_head out of target_modules and "
                         "modules_to_save")
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        kind = type(head).__name__ + (" with a bias" if isinstance(head, torch.nn.Linear) else "")
        raise ValueError(f"the {who}'s LM head is a {kind}; the fused distillation loss needs a bias-free nn.Linear")
    for config in (base.config, getattr(base.config, "text_config", None)):
        for name in _LOGIT_TRANSFORMS:
            value = getattr(config, name, None) if config is not None else None
            if value not in (None, 1, 1.0):
                raise ValueError(f"the {who}'s config sets {name}={value}, which the fused distillation loss does not "
                                 "apply to the logits")
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        raise ValueError(f"the {who} ({type(base).__name__}) has no logits_to_keep argument in forward, which the "
                         "trainer needs to run it without its full logits")


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The cap c of a model whose logits are c * tanh(raw / c) (Gemma 2's `final_logit_softcapping`), else None."""
    config = _base_model(model).config
    return getattr(getattr(config, "text_config", None) or config, "final_logit_softcapping", None) or None


def head_weight(model: torch.nn.Module, who: str) -> torch.Tensor:
    """The LM-head weight as the loss reads it between forward and backward, which must be whole (not sharded)."""
    weight = _base_model(model).get_output_embeddings().weight
    if type(weight).__name__ == "DTensor" or weight.dim() != 2:
        raise ValueError(f"the {who}'s LM head weight is sharded ({type(weight).__name__} {tuple(weight.shape)}); the "
                         "fused distillation loss needs it whole between forward and backward: under FSDP2 leave "
                         "lm_head (and tied embeddings) in the root module, whose parameters stay unsharded after "
                         "forward, not in an FSDP unit of its own")
    return weight


def decoder_hidden_states(model: torch.nn.Module, inputs: dict, keep_logits: bool = False
                          ) -> tuple[torch.Tensor, object]:
    """(last hidden states, outputs) of a causal LM called as `model(**inputs)`, with no position's logits
    (with every position's when `keep_logits`).

    The call goes through `model` itself, so whatever wraps its forward (DDP, FSDP, accelerate's autocast
    and `convert_outputs_to_fp32`) runs as in training; `logits_to_keep` is an empty index, so the LM head
    maps zero positions, and a forward hook on the decoder keeps its output before any wrapper sees it.
    """
    decoder = _base_model(model).get_decoder()
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        no_position = torch.zeros(0, dtype=torch.long, device=inputs["input_ids"].device)
        outputs = model(**inputs) if keep_logits else model(**inputs, logits_to_keep=no_position)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one call of the decoder {type(decoder).__name__}, saw {len(captured)}")
    return captured[0], outputs


class DistillationTrainer(Trainer):
    """`Trainer` with a frozen teacher and the distillation loss of `DistillationConfig`."""

    # `compute_loss` returns a per-micro-batch mean, so the Trainer divides it by the accumulation steps.
    # Packed blocks have the same number of positions in every micro-batch, which makes that the exact mean.
    loss_is_scaled_for_ga = False

    def __init__(self, model: PreTrainedModel, teacher_model: PreTrainedModel, args: DistillationConfig, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        # The loss is computed here, not by the model: no need for the Trainer to count tokens every step.
        self.model_accepts_loss_kwargs = False
        if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
            raise ValueError("FSDP1 is not supported by the fused distillation loss (it reads the student's LM head "
                             "between forward and backward); set fsdp_version: 2 in the accelerate config")
        check_fused_head(model, "student")
        check_fused_head(teacher_model, "teacher")
        self.teacher = self._prepare_teacher(teacher_model)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_micro_batches = 0
        self._predicting = False  # True inside a prediction_step that returns logits

    def _prepare_teacher(self, teacher: PreTrainedModel) -> PreTrainedModel:
        """Frozen, in eval mode, on this process's device, its weights in the training precision.

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
        # Labels stay out of the forward: the model's own loss would need all of its logits.
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        targets, valid = next_token_targets(labels, inputs.get("attention_mask"))
        positions = valid.sum().clamp(min=1)
        args = self.args
        keep_logits = self._predicting and not model.training  # logits asked for by prediction_step
        hidden, outputs = decoder_hidden_states(model, model_inputs, keep_logits)
        weight = head_weight(model, "student")

        if not model.training:  # evaluation: the student's own next-token loss
            with self.accelerator.autocast():
                loss, _, _ = fused_distillation_loss(hidden, weight, None, None, targets, valid, 1.0, 0.0,
                                                     1 / positions, args.kd_chunk_size, logit_softcap(model))
            return (loss, outputs) if return_outputs else loss

        # The teacher under the student's autocast (its LayerNorms and softmaxes in fp32 as the student's are),
        # its decoder alone: its logits are made a chunk at a time inside the loss.
        teacher_hidden = None
        if args.alpha_kd > 0 or args.alpha_cos > 0:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_hidden = _base_model(self.teacher).get_decoder()(**model_inputs)[0]
        kd_scale = args.temperature**2 / positions
        weight, teacher_weight = shared_vocabulary_rows(weight, head_weight(self.teacher, "teacher"))
        with self.accelerator.autocast():
            caps = logit_softcap(model), logit_softcap(self.teacher)
            if args.kd_loss_backend == "liger" and args.alpha_kd > 0:
                if any(caps):
                    raise ValueError("kd_loss_backend: liger does not apply final_logit_softcapping; use "
                                     "kd_loss_backend: torch")
                loss, kd_mean, ce_mean = liger_distillation_loss(
                    hidden, weight, teacher_hidden, teacher_weight, targets, args.temperature,
                    args.alpha_kd, args.alpha_ce, args.kd_chunk_size)
                parts = {"kd": kd_mean * args.temperature**2, "ce": ce_mean}
            else:
                loss, kd_sum, ce_sum = fused_distillation_loss(
                    hidden, weight, teacher_hidden if args.alpha_kd > 0 else None, teacher_weight,
                    targets, valid, args.temperature, args.alpha_kd * kd_scale, args.alpha_ce / positions,
                    args.kd_chunk_size, *caps)
                parts = {"kd": kd_sum * kd_scale, "ce": ce_sum / positions}
        if args.alpha_cos > 0:
            parts["cos"] = hidden_cosine_loss(hidden, teacher_hidden, valid)
            loss = loss + args.alpha_cos * parts["cos"]
        if args.alpha_kd == 0:
            del parts["kd"]
        self._record(parts)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The stock step (loss, logits, labels); the logits are the student's, made only when they are returned.

        `evaluate()` asks for the loss alone unless `compute_metrics` is set, and then the student's head
        maps no position; otherwise its forward makes the full logits for the metrics (the batch's logits,
        which is what a `compute_metrics` reads; `preprocess_logits_for_metrics` can shrink what is kept).
        """
        self._predicting = not prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        finally:
            self._predicting = False

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
