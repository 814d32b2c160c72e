"""`LayerDroppingTrainer`: remove the k least important decoder blocks, then optionally heal with LoRA.

Trainer supplies the data loaders (sharded across processes by accelerate), mixed precision and logging; the
score sums and perplexity are summed over every process's shard, so any number of processes chooses the same
blocks. The run:

1. validation perplexity of the full model;
2. block scores on the `num_samples` calibration blocks (`compress.layer_dropping.importance`);
3. the chosen blocks removed (`compress.layer_dropping.removal`), perplexity again;
4. optionally LoRA healing (peft) on the training blocks, merged into the weights, perplexity again;
5. the shortened model saved as a stock checkpoint, then `layer_dropping.json` (last: its presence means done).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import Trainer, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from compress.common.atomic_files import write_json_atomically
from compress.layer_dropping.config import LayerDroppingConfig
from compress.layer_dropping.importance import (
    ANGULAR_DISTANCE,
    accumulate_score_sums,
    blocks_to_remove,
    finish_scores,
    resolve_token_positions,
)
from compress.layer_dropping.removal import check_blocks_to_remove, drop_blocks
from compress.models.blocks import check_block_support, decoder_blocks
from compress.models.students import count_parameters

logger = logging.getLogger(__name__)

RECORD_FILE = "layer_dropping.json"
HEALING_SUBDIR = "lora_healing"


def sequence_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the sum of next-token cross-entropies and the number of predicted tokens (-100 skipped)."""
    targets = labels[..., 1:]
    losses = F.cross_entropy(logits[..., :-1, :].transpose(1, 2).float(), targets, ignore_index=-100,
                             reduction="none")
    return losses.sum(dim=-1), (targets != -100).sum(dim=-1)


class LayerDroppingTrainer(Trainer):
    """Shortens a causal LM by whole decoder blocks; see the module docstring.

    `importance_dataset` holds the calibration blocks, `eval_dataset` the blocks perplexity is measured on,
    `train_dataset` (optional) the blocks LoRA healing trains on. `data_description` is copied into the record.
    """

    def __init__(self, model, args: LayerDroppingConfig, importance_dataset, eval_dataset, train_dataset=None,
                 processing_class=None, data_collator=None, data_description: dict | None = None, **kwargs):
        check_block_support(model.config)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator or default_data_collator,
                         **kwargs)
        self.importance_dataset = importance_dataset
        self.data_description = dict(data_description or {})
        self.record: dict = {}

    def _progress(self, loader, description: str):
        return tqdm(loader, desc=description, disable=self.args.disable_tqdm or not self.is_local_process_zero())

    def importance_dataloader(self) -> DataLoader:
        """This process's contiguous share of the calibration blocks, each block on exactly one process
        (accelerate's loader would repeat blocks to even out the last batch, and they would count twice)."""
        size, rank, world = len(self.importance_dataset), self.args.process_index, self.args.world_size
        share = Subset(self.importance_dataset, range(size * rank // world, size * (rank + 1) // world))
        return DataLoader(share, batch_size=self.args.eval_batch_size, collate_fn=self.data_collator,
                          num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)

    def compute_scores(self) -> tuple[torch.Tensor, int]:
        """The method's scores (per span start or per block) over all processes' shares, and the tokens used."""
        args = self.args
        method, span = args.method, args.num_blocks_to_drop
        positions = resolve_token_positions(method, args.token_positions)
        blocks = len(decoder_blocks(self.model))
        size = blocks - span + 1 if method == ANGULAR_DISTANCE else blocks
        sums = torch.zeros(size, dtype=torch.float64, device=args.device)
        tokens = 0
        loader = self.importance_dataloader()
        if len(loader.dataset):  # a process may get no block when there are fewer blocks than processes
            sums, tokens = accumulate_score_sums(self.model, self._progress(loader, f"{method} scores"), method, span,
                                                 positions, autocast=self.accelerator.autocast)
            sums = sums.to(args.device)
        count = torch.tensor([float(tokens)], dtype=torch.float64, device=args.device)
        sums = self.accelerator.reduce(sums, reduction="sum")
        # each process's share, for the record (a data-parallel run can be seen to have split the blocks)
        self.tokens_per_process = [int(n) for n in self.accelerator.gather(count).tolist()]
        tokens = sum(self.tokens_per_process)
        return finish_scores(sums, tokens, method).cpu(), tokens

    @torch.no_grad()
    def perplexity(self) -> float:
        """exp(mean next-token loss) over the validation blocks, gathered from every process
        (`gather_for_metrics` drops the samples accelerate repeats to even out the last batch)."""
        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        for batch in self._progress(self.get_eval_dataloader(), "perplexity"):
            batch = {k: v.to(self.args.device) for k, v in batch.items()}
            labels = batch.pop("labels", batch["input_ids"])
            with self.accelerator.autocast():
                logits = self.model(**batch, use_cache=False).logits
            losses, tokens = self.accelerator.gather_for_metrics(sequence_token_losses(logits, labels))
            total_loss += float(losses.double().sum())
            total_tokens += int(tokens.sum())
        loss = total_loss / max(total_tokens, 1)
        perplexity = math.exp(min(loss, 700.0))  # exp overflows past ~709
        self.log({"eval_loss": loss, "eval_perplexity": perplexity,
                  "eval_blocks": len(decoder_blocks(self.accelerator.unwrap_model(self.model)))})
        return perplexity

    def drop(self) -> dict:
        """Score the blocks, remove the chosen ones from `self.model` (in place); returns the record."""
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        config = model.config
        blocks_before = len(decoder_blocks(model))
        try:
            check_blocks_to_remove(config, range(args.num_blocks_to_drop))
        except ValueError as err:
            raise SystemExit(f"error: num_blocks_to_drop={args.num_blocks_to_drop}: {err}") from None
        perplexity_before = self.perplexity()
        parameters_before = count_parameters(model)
        scores, tokens = self.compute_scores()
        removed = blocks_to_remove(scores, args.method, args.num_blocks_to_drop)
        updates = drop_blocks(model, removed)
        perplexity_after = self.perplexity()
        self.record = {
            "model_name_or_path": args.model_name_or_path,
            "model_type": config.model_type,
            "method": args.method,
            "token_positions": resolve_token_positions(args.method, args.token_positions),
            "num_blocks_to_drop": args.num_blocks_to_drop,
            "num_blocks": {"before": blocks_before, "after": blocks_before - len(removed)},
            "scores": [float(s) for s in scores],
            "scores_index": "span start (span of num_blocks_to_drop blocks)" if args.method == ANGULAR_DISTANCE
            else "block",
            "blocks_removed": removed,
            "blocks_kept": [i for i in range(blocks_before) if i not in removed],
            "config_updates": updates,
            "calibration": {**self.data_description, "num_samples_requested": args.num_samples,
                            "num_samples": len(self.importance_dataset), "seed": args.seed, "tokens": tokens,
                            "tokens_per_process": self.tokens_per_process},
            "perplexity_before": perplexity_before,
            "perplexity_after": perplexity_after,
            "parameter_count": {"before": parameters_before, "after": count_parameters(model)},
            "healing": None,
        }
        logger.info("removed blocks %s; perplexity %.3f -> %.3f", removed, perplexity_before, perplexity_after)
        return self.record

    def heal_with_lora(self) -> float:
        """Fine-tune the shortened model with LoRA adapters, merge them into the weights, return perplexity."""
        from peft import LoraConfig, get_peft_model

        if self.train_dataset is None:
            raise SystemExit("error: lora_healing needs training data (train_dataset)")
        args = self.args
        targets = args.lora_target_modules
        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=targets[0] if targets == ["all-linear"] else list(targets),
                          task_type="CAUSAL_LM")
        peft_model = get_peft_model(self.accelerator.unwrap_model(self.model), lora)
        healing_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / HEALING_SUBDIR))
        healing = Trainer(model=peft_model, args=healing_args, train_dataset=self.train_dataset,
                          data_collator=self.data_collator, processing_class=self.processing_class)
        last = get_last_checkpoint(healing_args.output_dir) if Path(healing_args.output_dir).is_dir() else None
        result = healing.train(resume_from_checkpoint=last)
        merged = healing.accelerator.unwrap_model(healing.model).merge_and_unload()
        self.model = self.model_wrapped = merged.to(args.device)
        perplexity = self.perplexity()
        self.record["healing"] = {
            "method": "lora", "r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
            "target_modules": list(targets), "steps": healing.state.global_step,
            "max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate, "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "seed": args.seed,
            "train_blocks": len(self.train_dataset), "train_loss": result.training_loss,
            "perplexity_after_healing": perplexity,
        }
        return perplexity

    def save_dropped(self, output_dir: str | None = None) -> None:
        """The shortened model and tokenizer in output_dir, then layer_dropping.json (last)."""
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        tmp = output_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(tmp)
        for item in tmp.iterdir():  # output_dir may hold the healing run's checkpoints
            os.replace(item, output_dir / item.name)
        tmp.rmdir()
        write_json_atomically(output_dir / RECORD_FILE, self.record)
