"""Each model's provenance in words: what was done to it, from which model, on which data, and which record says
so, read from the records beside the model (`results.TRAINER_RECORDS`) that `models.describe_model` reads."""

from __future__ import annotations

from dataclasses import dataclass

from compress.report.estimates import STEREOSET_OVERALL_TASK, Estimate
from compress.report.models import ModelInfo
from compress.report.results import ModelRun

NOT_RECORDED = "not recorded"


@dataclass
class Provenance:
    model: str
    what: str  # what was done to it
    made_from: str  # the model it was made from (as its record names it), or "-"
    data: str  # the text it was trained or calibrated on
    records: list[str]  # the files that say so


def _data_source(fields: dict | None) -> str:
    """One line for the data fields the records write (lm_data.describe_data, calibration blocks)."""
    if not fields:
        return NOT_RECORDED
    if isinstance(fields, str):
        return fields
    source = fields.get("train_file") or fields.get("source") or fields.get("data")
    if source is None and fields.get("dataset_name"):
        source = "/".join(str(v) for v in (fields["dataset_name"], fields.get("dataset_config_name")) if v)
    parts = [str(source or NOT_RECORDED)]
    count = fields.get("num_samples")
    if count is not None:
        parts.append(f"{count} blocks")
    if fields.get("block_size"):
        parts.append(f"of {fields['block_size']} tokens" if count is not None else
                     f"in blocks of {fields['block_size']} tokens")
    if fields.get("tokens"):
        parts.append(f"({fields['tokens']:,} tokens)")
    return " ".join(parts)


def _known(*parts: str | None) -> str:
    """The parts a record had, joined; those it lacked (None) left out."""
    return ", ".join(p for p in parts if p)


def _distillation(info: ModelInfo, record: dict) -> tuple[str, str]:
    kept = record.get("kept_layers")
    layers, of = record.get("student_layers"), record.get("teacher_layers")
    what = _known("distilled" + (f" into {layers}" + (f" of {of}" if of else "") + " blocks" if layers else ""),
                  f"{info.init} init" if info.init else None,
                  f"blocks {', '.join(map(str, kept))} kept" if kept and info.init == "teacher" else None,
                  f"{record['global_step']} steps" if record.get("global_step") else None,
                  f"temperature {record['temperature']}" if record.get("temperature") is not None else None)
    data = dict(record)
    data["num_samples"] = record.get("train_blocks")
    return what, _data_source(data)


def _pruning(info: ModelInfo, record: dict) -> tuple[str, str]:
    heads = record.get("heads_per_iteration") or []
    iterations = max(len(heads) - 1, 0)
    what = _known("attention-head pruning", f"{iterations} iterations" if heads else None,
                  f"{heads[0]} -> {heads[-1]} heads" if heads else None,
                  f"unit: {record['unit']}" if record.get("unit") else None)
    return what, _data_source(record.get("data_subset") or record.get("data"))


def _post_training(info: ModelInfo, record: dict) -> tuple[str, str]:
    what = f"{info.method}: {info.compression}" + (f", {info.checkpoint_format}" if info.checkpoint_format else "")
    calibration = record.get("calibration")
    return what, _data_source(calibration) if calibration else "none (no calibration)"


def _layer_dropping(info: ModelInfo, record: dict) -> tuple[str, str]:
    removed = record.get("blocks_removed") or []
    healing = record.get("healing") or {}
    what = _known("layer dropping", f"blocks {', '.join(map(str, removed))} removed" if removed else None,
                  f"by {record['method']}" if record.get("method") else None, "LoRA healing" if healing else None)
    return what, _data_source(record.get("calibration"))


def _trained_here(record: dict, lms: Estimate | None) -> tuple[str, str]:
    """A model the study trained (the demo's teacher): its recipe, its held-out token perplexity beside a unigram
    model's of the same text and tokenizer (has it learned more than word frequencies?), and its StereoSet LMS
    where the report has it (does it prefer meaningful candidates to unrelated ones?)."""
    perplexity, unigram = record.get("heldout_token_perplexity"), record.get("unigram_token_perplexity")
    learned = None
    if isinstance(perplexity, (int, float)):
        learned = f"held-out token perplexity {perplexity:.4g}"
        if isinstance(unigram, (int, float)) and unigram > 0:
            learned += f" (unigram model {unigram:.4g}: {perplexity / unigram:.2f} of it)"
    meaning = None if lms is None else (f"StereoSet LMS {lms.value:.1f} [{lms.low:.1f}, {lms.high:.1f}] "
                                        "(50: indifferent to meaning)")
    what = _known(f"trained from scratch: {record.get('model', 'a model')}",
                  f"{record['steps']} steps" if record.get("steps") else None, learned, meaning)
    return what, _data_source(record)


def provenance(info: ModelInfo, run: ModelRun, estimates: list[Estimate] = ()) -> Provenance:
    records = [path.name for path in run.record_files]
    made_from = info.baseline or "-"
    if run.distillation:
        what, data = _distillation(info, run.distillation)
        made_from = run.distillation.get("teacher") or made_from
    elif run.pruning:
        what, data = _pruning(info, run.pruning)
        made_from = run.pruning.get("model_name_or_path") or made_from
    elif run.quantization or run.sparsity:
        record = run.quantization or run.sparsity
        what, data = _post_training(info, record)
        made_from = record.get("model_name_or_path") or made_from
    elif run.layer_dropping:
        what, data = _layer_dropping(info, run.layer_dropping)
        made_from = run.layer_dropping.get("model_name_or_path") or made_from
    elif run.teacher:
        lms = next((e for e in estimates if e.model == info.name and e.task == STEREOSET_OVERALL_TASK
                    and e.metric == "lms"), None)
        what, data = _trained_here(run.teacher, lms)
    else:
        what, data = "evaluated as it is (no compression record)", "-"
    if info.baseline and made_from != info.baseline:
        made_from = f"{info.baseline} ({made_from})"
    return Provenance(info.name, what, made_from, data, records)


def provenances(report) -> list[Provenance]:
    return [provenance(info, report.runs[info.name], report.estimates) for info in report.models]
