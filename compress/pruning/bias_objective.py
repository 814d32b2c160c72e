"""A differentiable bias measure and its gradient with respect to the head gates (after FASP, Zayed et al. 2024).

For one source of pairs (`bias_choice.BiasPairs`: WinoBias pro/anti, StereoSet stereotype/anti-stereotype) the
measure is the mean likelihood gap

    b = mean_i [ s(favoured_i) - s(disfavoured_i) ]

where s is a sentence's log-likelihood after the model's prefix token (BOS, else EOS, as lm-eval prepends it),
in total (WinoBias, as its task scores pairs) or per token (StereoSet, whose scores are per-token means). An
unbiased model has b = 0, so the objective is |b|, summed over sources. Removing unit u (its gate from 1 to 0)
changes b by about -db/dg_u, so to first order it lowers |b| by

    c_u = sign(b) * db/dg_u           (summed over sources)

and bias-targeted pruning removes the units of largest c_u: its importance score is -c_u (the pruning loop
removes the lowest scores). The gap is the smooth form of the task metrics, which count pairs: WinoBias's
bias_gap (pro_rate - anti_rate over the pairs) and StereoSet's ss; both are recorded beside it.

One pass gives every sentence's gradient (each sequence has its own copy of the gates, as in `head_gates`), so
b and db/dg come from the same forward pass. Every process computes them on all pairs (the choosing data is
small), so every process chooses the same heads.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from compress.bias import metrics as bias_metrics
from compress.pruning.bias_choice import BiasPairs
from compress.pruning.head_gates import HeadGates, frozen_parameters, sequence_token_losses


@dataclass
class SourceEvaluation:
    """One source's sentence scores (favoured, disfavoured) and, when asked for, each sentence's gate gradient."""

    pairs: BiasPairs
    favoured: torch.Tensor  # (pairs,)
    disfavoured: torch.Tensor
    favoured_grad: torch.Tensor | None = None  # (pairs, layers, units)
    disfavoured_grad: torch.Tensor | None = None

    @property
    def gap(self) -> float:
        return float((self.favoured - self.disfavoured).mean())

    def gap_gradient(self) -> torch.Tensor:
        """db/dg, (layers, units)."""
        return (self.favoured_grad - self.disfavoured_grad).mean(dim=0)

    def measures(self) -> dict:
        """The gap and the pair-counting metric of the source's task, on the choosing pairs."""
        measure = {"dataset": self.pairs.dataset, "pairs": len(self.favoured), "gap": self.gap}
        fav, dis = self.favoured.tolist(), self.disfavoured.tolist()
        if self.pairs.dataset == "winobias":
            measure["bias_gap"] = bias_metrics.winobias_scores(zip(fav, dis, strict=True))["bias_gap"]
        else:  # ss compares per-token geometric-mean probabilities; the unrelated sentence is not scored here
            items = [bias_metrics.stereoset_item(t, d, {"stereotype": math.exp(f), "anti-stereotype": math.exp(a),
                                                        "unrelated": 0.0})
                     for t, d, f, a in zip(self.pairs.targets, self.pairs.domains, fav, dis, strict=True)]
            measure["ss"] = bias_metrics.stereoset_scores(items)["ss"]
        return measure


class BiasObjective:
    """Scores the pairs of every source with the current gates; see the module docstring."""

    def __init__(self, sources: list[BiasPairs], tokenizer, batch_size: int = 16):
        if not sources:
            raise ValueError("a bias objective needs at least one source of pairs")
        self.sources = sources
        self.batch_size = batch_size
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix

        def encode(texts):
            return [[prefix] + tokenizer.encode(t, add_special_tokens=False) for t in texts]

        self.encoded = [(encode(s.favoured), encode(s.disfavoured)) for s in sources]

    def evaluate(self, model, gates: HeadGates, gradients: bool = False, autocast=None) -> list[SourceEvaluation]:
        was_training = model.training
        model.eval()
        try:
            with frozen_parameters(model):
                results = []
                for pairs, (favoured, disfavoured) in zip(self.sources, self.encoded, strict=True):
                    fav = self._scores(model, gates, favoured, pairs.score, gradients, autocast)
                    dis = self._scores(model, gates, disfavoured, pairs.score, gradients, autocast)
                    results.append(SourceEvaluation(pairs, fav[0], dis[0], fav[1], dis[1]))
                return results
        finally:
            gates.per_sequence = None
            model.train(was_training)

    def measures(self, model, gates: HeadGates, autocast=None) -> dict:
        """pruning.json's per-iteration entry: each source's measures and the objective sum |b|."""
        with torch.no_grad():
            sources = [e.measures() for e in self.evaluate(model, gates, autocast=autocast)]
        return {"objective": sum(abs(s["gap"]) for s in sources), "sources": sources}

    def importance(self, model, gates: HeadGates, autocast=None) -> tuple[torch.Tensor, dict]:
        """(-c per unit, masked units 0; the measures at the current gates)."""
        evaluations = self.evaluate(model, gates, gradients=True, autocast=autocast)
        contribution = sum(math.copysign(1.0, e.gap) * e.gap_gradient() for e in evaluations)
        sources = [e.measures() for e in evaluations]
        measures = {"objective": sum(abs(s["gap"]) for s in sources), "sources": sources}
        return -contribution * gates.mask.to(contribution), measures

    def _scores(self, model, gates, sequences, score, gradients, autocast):
        device = gates.values.device
        scores, grads = [], []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, seq in enumerate(chunk):
                ids[i, :len(seq)] = labels[i, :len(seq)] = torch.tensor(seq)
                attention[i, :len(seq)] = 1
            ids, labels, attention = ids.to(device), labels.to(device), attention.to(device)
            if gradients:
                gates.per_sequence = gates.values.expand(len(chunk), -1, -1).clone().requires_grad_(True)
            with (torch.enable_grad() if gradients else nullcontext()), (autocast or nullcontext)():
                logits = model(input_ids=ids, attention_mask=attention).logits
                losses, tokens = sequence_token_losses(logits, labels)
                value = -losses if score == "total" else -losses / tokens.clamp(min=1)
            if gradients:
                value.sum().backward()  # each sentence's score depends on its own gates only
                grads.append(gates.per_sequence.grad.detach().clone())
                gates.per_sequence = None
            scores.append(value.detach().double().cpu())
        return torch.cat(scores), (torch.cat(grads).double().cpu() if gradients else None)
