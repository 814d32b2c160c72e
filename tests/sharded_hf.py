"""A test-only lm-eval model that really shards documents on CPU, and `python tests/sharded_hf.py ARGS` = lm_eval.

lm-eval's `hf` model only takes its rank and world size from accelerate when `torch.cuda.device_count() > 1`
(the `elif gpus > 1` branch of `HFLM.__init__`); on CPU every process of `accelerate launch --num_processes 2`
runs as rank 0 of 1 and evaluates every document. `ShardedHFLM` is `HFLM` with the rank, world size and
`accelerator` of accelerate's gloo processes, so lm-eval's evaluator splits the documents between them as it
does between GPUs. It also writes, per process, which documents each request it was asked came from
($COMPFAIR_SHARDING_RECORD/rank<r>.json), so a test can check that sharding really happened.

Run as a file, it registers the model as `compfair_sharded_hf` and then runs lm-eval's command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

RECORD_ENV = "COMPFAIR_SHARDING_RECORD"


@register_model("compfair_sharded_hf")
class ShardedHFLM(HFLM):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            self._rank = accelerator.process_index
            self._world_size = accelerator.num_processes
        self._requests_seen: list[dict] = []

    def _record(self, request_type: str, requests) -> None:
        folder = os.environ.get(RECORD_ENV)
        if not folder:
            return
        self._requests_seen += [{"type": request_type, "task": r.task_name, "doc_id": r.doc_id} for r in requests]
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank{self.rank}.json").write_text(json.dumps(
            {"rank": self.rank, "world_size": self.world_size, "requests": self._requests_seen}))

    def loglikelihood(self, requests, *args, **kwargs):
        self._record("loglikelihood", requests)
        return super().loglikelihood(requests, *args, **kwargs)

    def generate_until(self, requests, *args, **kwargs):
        self._record("generate_until", requests)
        return super().generate_until(requests, *args, **kwargs)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
