"""Sparsify a causal LM after training: magnitude, Wanda or SparseGPT, unstructured or N:M, layer by layer.

    python compress/sparsify.py [CONFIG.yaml] --model_name_or_path DIR --output_dir OUT \\
        --method wanda --sparsity 0.5 --train_file calib.txt --block_size 128 --num_samples 128
    python compress/sparsify.py ... --method sparsegpt --pattern 2:4

Any field of `compress.sparsity.config.SparsityConfig` or of the calibration data
(`compress.common.calibration.CalibrationData`: train_file, dataset_name, block_size, ...) can be set in the
YAML file or by a flag. Writes OUT: a stock checkpoint (pruned weights are zeros), the tokenizer, and
sparsity.json (written last; a finished run is skipped, an interrupted one starts again from scratch).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file, Python puts compress/ first on sys.path; the project root goes there instead (see prune.py).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from compress.common.arguments import parse_config_and_flags
from compress.common.calibration import CalibrationData
from compress.models.blocks import UnsupportedArchitecture
from compress.sparsity.config import SparsityConfig
from compress.sparsity.run import run


def main(argv: list[str] | None = None) -> dict | None:
    config, data = parse_config_and_flags((SparsityConfig, CalibrationData), argv)
    try:
        record = run(config, data)
    except (UnsupportedArchitecture, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if record is not None:
        print(f"{config.method} ({record['pattern'] if config.pattern else config.sparsity}): overall sparsity "
              f"{record['overall_sparsity']:.4f} in {record['seconds']:.1f}s; saved to {config.output_dir}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
