"""`HeadPruningTrainer`: iterative attention-head pruning (Michel et al., 2019) on Trainer's machinery.

Trainer supplies the data loaders (sharded across processes by accelerate), mixed precision and
logging; importance and perplexity are summed over every process's shard. One iteration:

1. importance of every head on the `num_samples` importance blocks, with the current mask;
2. mask the ceil(prune_fraction x remaining) least important heads, never a layer's last head;
3. validation perplexity.

The unit is a setting (`unit`: `kv_group`, the default, or `query_head`; see `compress.models.attention`):
importance, the schedule ("5% of the remaining units") and the stop options count units, while
pruning.json's `heads_per_iteration` and `pruned_heads_per_iteration` count query heads, as they always did,
beside the units and the KV heads left.

Then the masked heads are sliced out for real (`compact_from_masked`), optionally followed by
LoRA recovery fine-tuning merged back into the weights, and the model is saved twice: the stock architecture
whose pruned heads are zeros (output_dir) and the compact form (output_dir/compact). Query heads pruned
inside KV groups have no compact form; then only the portable form is saved. `pruning.json`
records every iteration. Progress is saved after each iteration, so an interrupted run resumes.

With `importance: bias` step 1 scores units by the gate gradient of a bias measure on `bias_data` instead
(`compress.pruning.bias_objective`; the choosing data is kept apart from the evaluation data by
`compress.pruning.bias_choice`); `max_perplexity` bounds the damage. Whenever a bias objective is given (also
to a loss-targeted run, to compare) pruning.json records its measures at every iteration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import Trainer, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from compress.common.atomic_files import write_json_atomically
from compress.models.attention import compact_possible, head_shape, kept_kv_heads
from compress.models.students import count_parameters
from compress.pruning.bias_objective import BiasObjective
from compress.pruning.config import PruningConfig
from compress.pruning.head_gates import (
    HeadGates,
    accumulate_gate_gradients,
    check_supported,
    finish_importance,
    sequence_token_losses,
)
from compress.pruning.head_pruning import (
    compact_from_masked,
    forward_flops,
    forward_seconds,
    heads_per_layer,
    heads_to_prune,
    kept_query_heads,
    portable_from_compact,
    portable_from_masked,
    select_heads_to_prune,
)

logger = logging.getLogger(__name__)

PROGRESS_FILE = "pruning_progress.json"
RECORD_FILE = "pruning.json"
COMPACT_SUBDIR = "compact"


class HeadPruningTrainer(Trainer):
    """Prunes a causal LM's attention heads (any family of `compress.models.attention`); see the module docstring.

    `importance_dataset` holds the blocks importance is estimated on, `eval_dataset` the blocks
    perplexity is measured on, `train_dataset` (optional) the blocks LoRA recovery trains on.
    `data_description` (a dict) is copied into pruning.json. `bias_objective` (a `BiasObjective`) is needed by
    `importance: bias` and measured at every iteration whenever it is given.
    """

    def __init__(self, model, args: PruningConfig, importance_dataset, eval_dataset, train_dataset=None,
                 processing_class=None, data_collator=None, data_description: dict | None = None,
                 bias_objective: BiasObjective | None = None, **kwargs):
        if args.importance == "bias" and bias_objective is None:
            raise SystemExit("error: importance bias needs a bias objective (bias_data)")
        check_supported(model.config, args.unit)
        self.compact = compact_possible(model.config, args.unit)
        if args.lora_recovery and not self.compact:
            raise SystemExit(f"error: lora_recovery needs the compact form, which unit {args.unit!r} on "
                             f"{model.config.model_type} does not have (use unit kv_group)")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator or default_data_collator,
                         **kwargs)
        self.importance_dataset = importance_dataset
        self.bias_objective = bias_objective
        self.data_description = dict(data_description or {})
        self.gates = HeadGates(self.model, args.unit)
        self.shape = head_shape(self.model.config)
        self.compact_model = None  # the pruned model once the heads are gone: compact, or portable without one
        self.importance_tokens = 0  # predicted tokens in the importance blocks, over all processes
        self.record: dict = {}

    # ---- one iteration's pieces ----

    def _progress(self, loader, description: str):
        return tqdm(loader, desc=description, disable=self.args.disable_tqdm or not self.is_local_process_zero())

    def importance_dataloader(self) -> DataLoader:
        """This process's contiguous share of the importance blocks, each block on exactly one process.

        (A loader prepared by accelerate would repeat blocks to even out the last batch, and repeated
        blocks would count twice in the summed gradients.)
        """
        size, rank, world = len(self.importance_dataset), self.args.process_index, self.args.world_size
        share = Subset(self.importance_dataset, range(size * rank // world, size * (rank + 1) // world))
        return DataLoader(share, batch_size=self.args.eval_batch_size, collate_fn=self.data_collator,
                          num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)

    def compute_head_importance(self, description: str = "head importance") -> torch.Tensor:
        """Importance of every head with the current mask: the loss objective's, summed over all processes'
        shares, or the bias objective's (every process scores all the bias pairs)."""
        if self.args.importance == "bias":
            importance, _ = self.bias_objective.importance(self.model, self.gates, autocast=self.accelerator.autocast)
            return importance.to(self.gates.values)
        loader = self._progress(self.importance_dataloader(), description)
        gradient_sum, tokens = accumulate_gate_gradients(self.model, self.gates, loader,
                                                         autocast=self.accelerator.autocast)
        tokens = torch.tensor(float(tokens), device=gradient_sum.device)
        gradient_sum = self.accelerator.reduce(gradient_sum, reduction="sum")
        self.importance_tokens = int(self.accelerator.reduce(tokens, reduction="sum").item())
        return finish_importance(gradient_sum, self.importance_tokens, self.gates.mask, self.args.normalize_importance)

    @torch.no_grad()
    def perplexity(self) -> float:
        """exp(mean next-token loss) over the validation blocks, gathered from every process.

        Per-sequence sums go through `gather_for_metrics`, which drops the samples accelerate repeats
        to even out the last batch, so the number is the same on any number of processes.
        """
        self.model.eval()
        loader = self.get_eval_dataloader()
        total_loss, total_tokens = 0.0, 0
        for batch in self._progress(loader, "perplexity"):
            batch = {k: v.to(self.args.device) for k, v in batch.items()}
            labels = batch.pop("labels", batch["input_ids"])
            with self.accelerator.autocast():
                logits = self.model(**batch).logits
            losses, tokens = self.accelerator.gather_for_metrics(sequence_token_losses(logits, labels))
            total_loss += float(losses.double().sum())
            total_tokens += int(tokens.sum())
        loss = total_loss / max(total_tokens, 1)
        perplexity = math.exp(min(loss, 700.0))  # exp overflows past ~709
        self.log({"eval_loss": loss, "eval_perplexity": perplexity, "eval_heads": int(self.heads_left())})
        return perplexity

    def bias_measures(self) -> dict | None:
        """The bias objective's measures with the current mask (None without one)."""
        if self.bias_objective is None:
            return None
        return self.bias_objective.measures(self.model, self.gates, autocast=self.accelerator.autocast)

    def heads_left(self) -> int:
        """Query heads still computing."""
        if self.compact_model is not None and self.compact:
            return sum(heads_per_layer(self.compact_model))
        return int(self.gates.query_head_mask().sum())

    # ---- the loop ----

    def _stop_reason(self, done: int, remaining: int) -> str | None:
        args = self.args
        if args.iterations is not None and done >= args.iterations:
            return f"iterations: {done} done"
        if args.target_heads is not None and remaining <= args.target_heads:
            return f"target_heads: {remaining} units left"
        if bool((self.gates.mask.sum(dim=1) <= 1).all()):
            return "every layer is down to one unit"
        return None

    def _start_record(self) -> None:
        config = self.model.config
        mask = self.gates.mask
        self.record = {
            "model_name_or_path": self.args.model_name_or_path,
            "model_type": config.model_type,
            "num_layers": self.shape.num_layers,
            "num_heads": self.shape.num_heads,
            "num_kv_heads": self.shape.num_kv_heads,
            "head_dim": self.shape.head_dim,
            "unit": self.args.unit,
            "units_per_layer": self.gates.num_units,
            "prune_fraction": self.args.prune_fraction,
            "normalize_importance": self.args.normalize_importance,
            "num_samples": len(self.importance_dataset),
            "data_subset": {**self.data_description, "num_samples_requested": self.args.num_samples,
                            "num_samples": len(self.importance_dataset)},
            **self._counts(mask),
            "kept_heads_per_iteration": [kept_query_heads(config, mask, self.args.unit)],
            "pruned_heads_per_iteration": [[]],
            "pruned_units_per_iteration": [[]],
            "importance_per_iteration": [None],
            "perplexity_per_iteration": [self.perplexity()],
        }
        self.record["importance"] = self.args.importance
        if self.bias_objective is not None:
            self.record["bias_data"] = {"objective": "sum over sources of |gap|", "overlap_policy":
                                        self.args.bias_overlap,
                                        "sources": [s.description for s in self.bias_objective.sources]}
            self.record["bias_measure_per_iteration"] = [self.bias_measures()]

    def _counts(self, mask) -> dict:
        """The first entries of the per-iteration counts for `mask` (units, query heads, KV heads)."""
        keep = kept_query_heads(self.model.config, mask, self.args.unit)
        return {"heads_per_iteration": [sum(len(h) for h in keep)],
                "heads_per_layer_per_iteration": [[len(h) for h in keep]],
                "kv_heads_per_iteration": [sum(len(kept_kv_heads(self.model.config, h)) for h in keep)],
                "units_per_iteration": [int(mask.sum())]}

    def _fingerprint(self) -> dict:
        return {**self.args.fingerprint(), "data": self.data_description}

    def _save_progress(self) -> None:
        if self.args.should_save:
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomically(Path(self.args.output_dir) / PROGRESS_FILE,
                                  {"fingerprint": self._fingerprint(), "record": self.record,
                                   "mask": self.gates.mask.cpu().tolist()})

    def _resume(self) -> bool:
        path = Path(self.args.output_dir) / PROGRESS_FILE
        if not path.is_file():
            return False
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["fingerprint"] != self._fingerprint():
            raise SystemExit(f"error: {path} comes from a run with other settings; delete it or pick another "
                             "output_dir")
        self.record = saved["record"]
        self.gates.set_mask(torch.tensor(saved["mask"]))
        logger.info("resuming after iteration %d (%d heads left)", len(self.record["heads_per_iteration"]) - 1,
                    self.record["heads_per_iteration"][-1])
        return True

    def prune(self) -> dict:
        """Run the pruning iterations, then slice the pruned heads out. Returns the record."""
        if not self._resume():
            self._start_record()
            self._save_progress()
        while True:
            done = len(self.record["heads_per_iteration"]) - 1
            remaining = int(self.gates.mask.sum())
            stop = self._stop_reason(done, remaining)
            if stop is not None:
                break
            count = heads_to_prune(remaining, self.args.prune_fraction, self.args.target_heads)
            importance = self.compute_head_importance(f"head importance (iteration {done + 1})")
            chosen = select_heads_to_prune(importance, self.gates.mask, count)
            if not chosen:
                stop = "no head left that may be pruned"
                break
            previous = self.gates.mask
            mask = previous.clone()
            for layer, head in chosen:
                mask[layer, head] = 0
            self.gates.set_mask(mask)
            perplexity = self.perplexity()
            if self.args.max_perplexity is not None and perplexity > self.args.max_perplexity:
                rejected = {"heads": int(mask.sum()), "perplexity": perplexity,
                            "pruned_heads": [list(h) for h in chosen]}
                if self.bias_objective is not None:  # measured with the rejected mask, before it is undone
                    rejected["bias_measure"] = self.bias_measures()
                self.record["rejected_iteration"] = rejected
                self.gates.set_mask(previous)
                stop = f"max_perplexity: iteration {done + 1} reached {perplexity:.3f} and was undone"
                break
            self._append_iteration(mask, chosen, importance, perplexity)
            logger.info("iteration %d: %d units left, perplexity %.3f", done + 1, int(mask.sum()), perplexity)
        self.record["stop_reason"] = stop
        self._save_progress()
        self._make_compact()
        return self.record

    def _append_iteration(self, mask, chosen, importance, perplexity) -> None:
        record = self.record
        record["data_subset"]["importance_tokens"] = self.importance_tokens
        for key, values in self._counts(mask).items():
            record[key].extend(values)
        record["kept_heads_per_iteration"].append(kept_query_heads(self.model.config, mask, self.args.unit))
        record["pruned_heads_per_iteration"].append(
            [[layer, head] for layer, unit in chosen for head in self.shape.query_heads_of_unit(self.args.unit, unit)])
        record["pruned_units_per_iteration"].append([list(u) for u in chosen])
        record["importance_per_iteration"].append(importance.cpu().tolist())
        record["perplexity_per_iteration"].append(perplexity)
        if self.bias_objective is not None:
            record["bias_measure_per_iteration"].append(self.bias_measures())
        self._save_progress()

    def _make_compact(self) -> None:
        """Slice the masked heads out; measure what that bought; from here on `self.model` is compact."""
        full = self.model
        mask = self.gates.mask
        self.gates.remove()  # the full model below runs unpruned: the baseline
        if self.compact:
            compact = compact_from_masked(full, mask, self.args.unit).to(self.args.device)
        else:  # query heads inside KV groups: the zero-filled stock model is the only form
            compact = portable_from_masked(full, mask, self.args.unit).to(self.args.device)
        self.record["parameter_count"] = {"unpruned": count_parameters(full), "pruned": count_parameters(compact)}
        self.record["speedup"] = (self._speedup(full, compact) if self.args.measure_speedup and self.compact
                                  else None)
        self.model = self.model_wrapped = self.compact_model = compact
        del full

    def _speedup(self, full, compact) -> dict:
        batch = next(iter(self.get_eval_dataloader()))
        input_ids = batch["input_ids"].to(self.args.device)
        full.eval()
        compact.eval()
        full_s, compact_s = forward_seconds([full, compact], input_ids)
        return {"measured": full_s / compact_s, "predicted_from_flops": forward_flops(full, input_ids) /
                forward_flops(compact, input_ids), "unpruned_forward_s": full_s, "pruned_forward_s": compact_s,
                "batch_size": int(input_ids.shape[0]), "sequence_length": int(input_ids.shape[1]),
                "device": str(input_ids.device)}

    # ---- optional recovery ----

    def recover_with_lora(self) -> float:
        """Fine-tune the compact model with LoRA adapters, merge them into the weights, return perplexity."""
        from peft import LoraConfig, get_peft_model

        if self.train_dataset is None:
            raise SystemExit("error: lora_recovery needs training data (train_dataset)")
        args = self.args
        gpt2 = self.model.config.model_type in ("gpt2", "compact_gpt2")
        targets = args.lora_target_modules or (["c_attn", "c_proj", "c_fc"] if gpt2 else "all-linear")
        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=targets, fan_in_fan_out=gpt2,  # GPT-2's Conv1D stores (in, out)
                          task_type="CAUSAL_LM")
        peft_model = get_peft_model(self.model, lora)
        recovery_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "lora_recovery"))
        recovery = Trainer(model=peft_model, args=recovery_args, train_dataset=self.train_dataset,
                           data_collator=self.data_collator, processing_class=self.processing_class)
        last = get_last_checkpoint(recovery_args.output_dir) if Path(recovery_args.output_dir).is_dir() else None
        recovery.train(resume_from_checkpoint=last)
        merged = recovery.accelerator.unwrap_model(recovery.model).merge_and_unload()
        self.model = self.model_wrapped = self.compact_model = merged.to(args.device)
        perplexity = self.perplexity()
        self.record["lora_recovery"] = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                                        "target_modules": targets if isinstance(targets, str) else list(targets),
                                        "steps": recovery.state.global_step}
        self.record["perplexity_after_recovery"] = perplexity
        return perplexity

    # ---- saving ----

    def save_pruned(self, output_dir: str | None = None) -> None:
        """Portable form in output_dir, compact form in output_dir/compact, then pruning.json (last)."""
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        compact = self.accelerator.unwrap_model(self.compact_model).to("cpu")
        forms = {"portable": "."}
        portable = portable_from_compact(compact) if self.compact else compact
        self._save_folder(portable, output_dir, output_dir / ".portable.tmp")
        if self.args.save_compact and self.compact:
            self._save_folder(compact, output_dir / COMPACT_SUBDIR, output_dir / ".compact.tmp")
            forms["compact"] = COMPACT_SUBDIR
        self.compact_model = compact.to(self.args.device)
        self.record["saved_forms"] = forms
        final = self.record["kept_heads_per_iteration"][-1]
        self.record["heads_per_layer"] = [len(heads) for heads in final]
        self.record["kv_heads_per_layer"] = [len({self.shape.kv_head_of(h) for h in heads}) for heads in final]
        write_json_atomically(output_dir / RECORD_FILE, self.record)
        (output_dir / PROGRESS_FILE).unlink(missing_ok=True)

    def _save_folder(self, model, folder: Path, tmp: Path) -> None:
        """Write the model and tokenizer to `tmp`, then move them into `folder` (which may hold other files)."""
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            os.replace(item, folder / item.name)
        tmp.rmdir()
