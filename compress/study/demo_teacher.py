"""The demo's teacher: a tiny GPT-2 trained on the bundled WikiText-2 text, so it has learned something.

`make demo` has no network, so its teacher cannot come from the hub. A model trained on a few kilobytes learns
word frequencies and little else, and then every compressed model looks like it. Here the teacher is trained on
the bundled WikiText-2 validation split (about 1 MB, `demo_data/wikitext2/`): the articles are split into a
training part and held-out articles, a byte-level BPE tokenizer is trained on the training part, and a 12-block,
12-head GPT-2 (the paper's 144 heads) is trained for a fixed number of steps, about a minute on two CPU cores.

Two figures say whether it has learned context and not only frequencies, and go in `teacher.json`:
  - its token perplexity on the held-out articles, next to that of a unigram model of the training text with the
    same tokenizer (add-one smoothed counts) on the same predicted tokens; the goal is at most half;
  - StereoSet's LMS on the bundled examples, measured by the evaluation stage like every other figure.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from compress.common.atomic_files import write_json_atomically

WIKITEXT = "wikitext2/wiki.valid.tokens"
HELDOUT_SHARE = 0.05  # the last 5% of the articles (3 of 60) are held out


@dataclass
class TeacherRecipe:
    """The teacher's shape and training, chosen for what a minute on two CPU cores teaches.

    Measured on a 2-core CPU machine (StereoSet LMS on the bundled sample, overall): with GPT-2's
    defaults (dropout 0.1, the tanh GELU written out op by op, 16 x 64 tokens) 250 steps took 55 s and gave
    LMS 47.3. Dropout was 29% of a step's time and the unfused GELU another 15%: without them a step is 2.1x
    faster, and in under two epochs of the text dropout has nothing to regularise. Smaller batches (more
    updates for the same tokens) and a 4,096-token vocabulary (more words in one token) each raised LMS;
    a wider model (144) or a longer context (128) lowered it in the same time.
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 96
    vocab_size: int = 4096
    block_size: int = 64  # also n_positions, so lm-eval's rolling windows never reach untrained positions
    batch_size: int = 8
    steps: int = 700
    learning_rate: float = 3e-3
    dropout: float = 0.0
    activation: str = "gelu_pytorch_tanh"  # GPT-2's own gelu_new, computed by one fused kernel
    seed: int = 0


def bundled_text() -> str:
    return (resources.files("compress.study") / "demo_data" / WIKITEXT).read_text(encoding="utf-8")


def split_articles(text: str, heldout_share: float = HELDOUT_SHARE) -> tuple[list[str], list[str]]:
    """(training paragraphs, held-out paragraphs), cut at an article boundary so no article is in both.

    WikiText marks an article's title as ` = Title = ` and its sections as ` = = Section = = `. Each line is
    detokenized as lm-eval's `wikitext` task does (`word .` back to `word.`, ` @-@ ` to `-`), so the models
    read ordinary punctuation, as in the prompts and bias sentences they are evaluated on. Blank lines are
    dropped: one paragraph per line is one document for the data loaders and lm-eval's `text` tasks.
    """
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(" = ") and not line.startswith(" = = ")]
    cut = starts[int(len(starts) * (1 - heldout_share))]
    keep = [wikitext_detokenizer({"page": line}).strip() for line in lines]
    return [line for line in keep[:cut] if line], [line for line in keep[cut:] if line]


def unigram_perplexity(train_ids: list[list[int]], heldout_blocks: list[list[int]], vocab_size: int) -> float:
    """Perplexity of add-one smoothed unigram frequencies of the training tokens, on the tokens the language
    model predicts in the held-out blocks (every token but each block's first)."""
    import torch

    counts = torch.ones(vocab_size, dtype=torch.float64)
    for block in train_ids:
        counts += torch.bincount(torch.tensor(block), minlength=vocab_size).double()
    log_p = (counts / counts.sum()).log()
    predicted = torch.tensor([block[1:] for block in heldout_blocks])
    return math.exp(-log_p[predicted].mean().item())


def write_demo_text(data_dir: Path) -> tuple[Path, Path]:
    """The bundled text as the demo's training file (`corpus.txt`: the teacher's, the students' and the
    calibration text) and its held-out articles (`heldout.txt`: the perplexity task's documents)."""
    train, heldout = split_articles(bundled_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus, heldout_file = data_dir / "corpus.txt", data_dir / "heldout.txt"
    corpus.write_text("\n".join(train) + "\n", encoding="utf-8")
    heldout_file.write_text("\n".join(heldout) + "\n", encoding="utf-8")
    return corpus, heldout_file


def train_demo_teacher(out: Path, corpus: Path, heldout_file: Path, recipe: TeacherRecipe | None = None,
                       log=print) -> dict:
    """Train the teacher on `corpus` (its tokenizer too) into `out`, and record it with its held-out figures."""
    recipe = recipe or TeacherRecipe()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

    from compress.common import tiny_models
    from compress.common.lm_data import DataArguments, build_lm_datasets

    train = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    building = out.with_name(out.name + ".tmp")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    # trained on the training paragraphs only, as the model is
    tokenizer = tiny_models.train_bpe_tokenizer(train, recipe.vocab_size, building, model_max_length=recipe.block_size)
    data = build_lm_datasets(DataArguments(train_file=str(corpus), validation_file=str(heldout_file),
                                           block_size=recipe.block_size), tokenizer, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=recipe.block_size, n_embd=recipe.n_embd,
                        n_layer=recipe.n_layer, n_head=recipe.n_head, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, resid_pdrop=recipe.dropout,
                        embd_pdrop=recipe.dropout, attn_pdrop=recipe.dropout,
                        activation_function=recipe.activation)
    model = GPT2LMHeadModel(config)
    training = TrainingArguments(
        output_dir=str(building / "checkpoints"), max_steps=recipe.steps, learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.batch_size, per_device_eval_batch_size=32, warmup_steps=10,
        lr_scheduler_type="cosine", weight_decay=0.0, logging_steps=max(1, recipe.steps // 5), save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, seed=recipe.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=default_data_collator)
    result = trainer.train()
    heldout_loss = trainer.evaluate()["eval_loss"]
    unigram = unigram_perplexity(data["train"]["input_ids"], data["validation"]["input_ids"], len(tokenizer))
    trainer.save_model(str(building))
    tokenizer.save_pretrained(building)
    shutil.rmtree(building / "checkpoints", ignore_errors=True)
    perplexity = math.exp(heldout_loss)
    record = {
        "model": "GPT-2 trained from scratch (compress.study.demo_teacher)", **asdict(recipe),
        "train_file": str(corpus), "heldout_file": str(heldout_file),
        "data": f"WikiText-2 validation split, bundled ({WIKITEXT}); articles split {1 - HELDOUT_SHARE:.0%} "
                f"training / {HELDOUT_SHARE:.0%} held out; see demo_data/wikitext2/SOURCE.md",
        "train_blocks": len(data["train"]), "heldout_blocks": len(data["validation"]),
        "train_loss": result.training_loss, "train_seconds": result.metrics["train_runtime"],
        "heldout_token_perplexity": perplexity, "unigram_token_perplexity": unigram,
        "perplexity_over_unigram": perplexity / unigram,
    }
    write_json_atomically(building / "teacher.json", record)
    if out.exists():
        shutil.rmtree(out)
    os.replace(building, out)
    log(f"teacher: held-out token perplexity {perplexity:.1f} (unigram {unigram:.1f}, ratio "
        f"{perplexity / unigram:.2f}) after {recipe.steps} steps in {record['train_seconds']:.0f}s")
    return record
