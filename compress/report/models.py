"""How each model in the results was made (method, baseline, shape, size), from its config and trainer record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from compress.bias import overlap
from compress.report.results import ModelRun

METHOD_ORDER = {"original": 0, "distillation": 1, "head pruning": 2, "layer dropping": 3, "quantization": 4,
                "sparsity": 5}


@dataclass
class ModelInfo:
    """How a model was made, and its size."""

    name: str
    model: str
    method: str  # original | distillation | head pruning | layer dropping
    baseline: str | None = None  # the name of the model it is compared against
    baseline_source: str | None = None  # where that came from: distillation.json, pruning.json,
    # layer_dropping.json, --compare
    init: str | None = None  # distillation: teacher | random
    blocks: int | None = None
    heads: int | None = None
    parameters: int | None = None
    perplexity: float | None = None
    perplexity_source: str | None = None
    trainer_perplexity: float | None = None
    prune_subset: int | None = None
    head_importance: str | None = None  # head pruning: loss (Michel et al.) or bias (pruning.json `importance`)
    bias_data: dict | None = None  # pruning.json `bias_data`: what heads were chosen (or measured) on
    leaky_tasks: dict[str, str] = field(default_factory=dict)  # evaluated tasks overlapping the choosing data
    heads_per_iteration: list = field(default_factory=list)
    perplexity_per_iteration: list = field(default_factory=list)
    # post-training quantization / sparsity (quantization.json, sparsity.json)
    algorithm: str | None = None  # gptq, awq, int8, int4; magnitude, wanda, sparsegpt
    bits: int | None = None
    group_size: int | None = None
    sparsity: float | None = None  # achieved share of zeros in the block linear layers
    pattern: str | None = None  # unstructured or N:M
    checkpoint_format: str | None = None
    linear_weight_bytes: int | None = None
    baseline_linear_weight_bytes: int | None = None
    model_files_bytes: int | None = None
    baseline_model_files_bytes: int | None = None

    @property
    def compression(self) -> str:
        """What was done, in a few words: "gptq 4-bit g128", "wanda 2:4"."""
        if self.method == "quantization":
            return f"{self.algorithm} {self.bits}-bit" + (f" g{self.group_size}" if self.group_size else "")
        if self.method == "sparsity":
            what = self.pattern if self.pattern and self.pattern != "unstructured" else (
                f"{self.sparsity:.0%}" if self.sparsity is not None else "")
            return f"{self.algorithm} {what}".strip()
        return ""

    @property
    def label(self) -> str:
        if self.method == "distillation" and self.init:
            return f"{self.name} ({self.blocks} blocks, {self.init} init)"
        if self.method == "head pruning":
            by = " by bias" if self.head_importance == "bias" else ""
            return f"{self.name} (pruned to {self.heads} heads{by})"
        if self.method in ("quantization", "sparsity"):
            return f"{self.name} ({self.compression})"
        if self.method == "layer dropping" and self.blocks:
            return f"{self.name} ({self.blocks} blocks, dropped)"
        return self.name


def _config_shape(config: dict | None) -> tuple[int | None, int | None]:
    """(blocks, attention heads) from a config.json, for GPT-2-style and encoder-decoder models."""
    if not config:
        return None, None
    layers = config.get("n_layer") or config.get("num_hidden_layers")
    heads = config.get("n_head") or config.get("num_attention_heads")
    if layers is None and config.get("decoder_layers") is not None:  # encoder-decoder: count both stacks
        layers = config.get("encoder_layers", 0) + config["decoder_layers"]
        heads_total = (config.get("encoder_layers", 0) * config.get("encoder_attention_heads", 0)
                       + config["decoder_layers"] * config.get("decoder_attention_heads", 0))
        return layers, heads_total or None
    kept = config.get("kept_heads")
    if isinstance(kept, list) and all(isinstance(h, list) for h in kept):  # compact pruned GPT-2: heads per layer
        return layers or len(kept), sum(len(h) for h in kept)
    if isinstance(heads, list):
        return layers or len(heads), int(sum(heads))
    return layers, (layers * heads if layers and heads else None)


def _hub_config(model: str) -> dict | None:
    """The config of a hub model from the local cache only (lm-eval downloaded it); never the network."""
    if Path(model).exists():
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, local_files_only=True).to_dict()
    except Exception:  # not cached, or not a transformers model: the shape stays unknown
        return None


def describe_model(run: ModelRun) -> ModelInfo:
    info = ModelInfo(run.name, run.model, "original", parameters=run.num_parameters)
    config = run.config if run.config is not None else _hub_config(run.model)
    info.blocks, info.heads = _config_shape(config)
    if run.distillation:
        record = run.distillation
        info.method = "distillation"
        info.blocks = record.get("student_layers", info.blocks)
        info.init = "teacher" if record.get("init_from_teacher", True) else "random"
        info.parameters = record.get("student_parameters") or info.parameters
        info.trainer_perplexity = _finite(record.get("perplexity"))
        info.baseline = record.get("teacher")
        info.baseline_source = "distillation.json"
    elif run.pruning:
        record = run.pruning
        info.method = "head pruning"
        heads = record.get("heads_per_iteration") or []
        info.heads_per_iteration = list(heads)
        info.heads = heads[-1] if heads else info.heads
        info.perplexity_per_iteration = list(record.get("perplexity_per_iteration") or [])
        if info.perplexity_per_iteration:
            info.trainer_perplexity = _finite(info.perplexity_per_iteration[-1])
        counts = record.get("parameter_count")
        if isinstance(counts, dict) and counts.get("pruned"):
            info.parameters = counts["pruned"]
        info.prune_subset = record.get("num_samples")
        info.head_importance = record.get("importance", "loss")
        info.bias_data = record.get("bias_data")
        info.baseline = record.get("model_name_or_path")
        info.baseline_source = "pruning.json"
    elif run.quantization or run.sparsity:
        _describe_post_training(info, run.quantization or run.sparsity, "quantization" if run.quantization
                                else "sparsity")
    elif run.layer_dropping:
        record = run.layer_dropping
        info.method = "layer dropping"
        info.blocks = (record.get("num_blocks") or {}).get("after", info.blocks)
        info.parameters = (record.get("parameter_count") or {}).get("after") or info.parameters
        healing = record.get("healing") or {}
        info.trainer_perplexity = _finite(healing.get("perplexity_after_healing", record.get("perplexity_after")))
        info.baseline = record.get("model_name_or_path")
        info.baseline_source = "layer_dropping.json"
    return info


def bias_chosen_on(info: ModelInfo) -> str | None:
    """What a bias-targeted model's heads were chosen on, in a few words."""
    if info.head_importance != "bias" or not info.bias_data:
        return None
    parts = []
    for source in info.bias_data.get("sources") or []:
        if source.get("dataset") == "winobias":
            parts.append(f"WinoBias {'+'.join(source.get('subsets') or [])} ({source.get('pairs')} pairs)")
        elif source.get("dataset") == "stereoset":
            parts.append(f"StereoSet {source.get('split')} of {len(source.get('choosing_targets') or [])} target "
                         f"terms ({source.get('pairs')} examples)")
    return "; ".join(parts) or None


def mark_bias_leakage(infos: dict[str, ModelInfo], runs: dict[str, ModelRun], notes: list[str]) -> None:
    """Mark each bias-targeted model evaluated on data its heads were chosen on (`compress.bias.overlap`)."""
    for name, info in infos.items():
        if info.head_importance != "bias":
            continue
        info.leaky_tasks = overlap.leaky_tasks(info.bias_data, runs[name].tasks)
        if info.leaky_tasks:
            why = sorted(set(info.leaky_tasks.values()))
            notes.append(f"{name} (†): its heads were chosen on bias data that {', '.join(sorted(info.leaky_tasks))} "
                         f"also evaluate ({'; '.join(why)}); those numbers measure the choice itself, not how "
                         "the pruning generalises")


def _describe_post_training(info: ModelInfo, record: dict, method: str) -> None:
    """A quantized or sparsified model: what was done, its bytes and those of the model it came from."""
    info.method = method
    info.algorithm = record.get("method")
    info.checkpoint_format = record.get("format")
    if method == "quantization":
        info.bits, info.group_size = record.get("bits"), record.get("group_size")
    else:
        info.sparsity = _finite(record.get("overall_sparsity"))
        info.pattern = record.get("pattern")
    sizes = record.get("bytes") or {}
    info.linear_weight_bytes = sizes.get("linear_weight_bytes")
    info.baseline_linear_weight_bytes = sizes.get("source_linear_weight_bytes")
    info.model_files_bytes = sizes.get("model_files_bytes")
    info.baseline_model_files_bytes = sizes.get("source_model_files_bytes")
    info.baseline = record.get("model_name_or_path")
    info.baseline_source = f"{method}.json"


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _same_model(reference: str, run: ModelRun) -> bool:
    """Whether a teacher named in a trainer record is this run's model (hub name or path)."""
    if reference in (run.model, run.name):
        return True
    ref, own = Path(reference).expanduser(), Path(run.model).expanduser()
    if ref.exists() and own.exists():
        return ref.resolve() == own.resolve()
    return False


def resolve_baselines(infos: dict[str, ModelInfo], runs: dict[str, ModelRun], pairs: dict[str, str],
                      notes: list[str]) -> None:
    """Turn each trainer record's teacher into the name of a model in the report, or drop it with a note."""
    for name, info in infos.items():
        if name in pairs:
            info.baseline, info.baseline_source = pairs[name], "--compare"
            continue
        if info.baseline is None:
            continue
        match = [other for other, run in runs.items() if other != name and _same_model(info.baseline, run)]
        if match:
            info.baseline = match[0]
        else:
            notes.append(f"{name}: its {info.baseline_source} names {info.baseline!r} as the model it came from, "
                         "which is not among the results; no paired test for it")
            info.baseline = None
    for model, baseline in pairs.items():
        if model not in infos or baseline not in infos:
            missing = model if model not in infos else baseline
            raise SystemExit(f"error: --compare {model}={baseline}: no model named {missing!r} in the results "
                             f"(models: {', '.join(sorted(infos))})")


def lineage_root(infos: dict[str, ModelInfo], name: str) -> str:
    """The model `name` was ultimately made from: its baseline's baseline, ..., up to one made from nothing here."""
    seen = {name}
    while infos[name].baseline in infos and infos[name].baseline not in seen:
        name = infos[name].baseline
        seen.add(name)
    return name


def lineages(infos: dict[str, ModelInfo]) -> dict[str, list[str]]:
    """Each original model with every model made from it (GPT-2 and its students; DialoGPT alone)."""
    groups: dict[str, list[str]] = {}
    for name in infos:
        groups.setdefault(lineage_root(infos, name), []).append(name)
    return groups


def families(infos: dict[str, ModelInfo], mix_families: bool = False) -> dict[str, list[str]]:
    """The groups a size correlation is computed within: each lineage ('all' when there is one, or when
    `mix_families` asks for every model together), and each baseline with the models compared against it.

    Different original models (GPT-2, DialoGPT, BlenderBot) differ in data and training as well as size, so
    mixing them would credit size with what the family does.
    """
    roots = lineages(infos)
    groups = {"all": list(infos)} if mix_families or len(roots) == 1 else \
        {f"{root} lineage": members for root, members in roots.items()}
    for name, info in infos.items():
        if info.baseline:
            groups.setdefault(f"{info.baseline} family", [info.baseline]).append(name)
    unique: dict[str, list[str]] = {}  # a group with the same models as an earlier one says nothing new
    for label, members in groups.items():
        if all(set(members) != set(other) for other in unique.values()):
            unique[label] = members
    return unique
