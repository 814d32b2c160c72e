"""Quantize a causal LM's weights after training: int8 / int4 round-to-nearest, GPTQ or AWQ.

    python compress/quantize.py [CONFIG.yaml] --model_name_or_path DIR --output_dir OUT --method int4 --group_size 128
    python compress/quantize.py ... --method gptq --bits 4 --train_file calib.txt --block_size 512 --num_samples 128

Any field of `compress.quantization.config.QuantizeConfig` or of the calibration data
(`compress.common.calibration.CalibrationData`: train_file, dataset_name, block_size, ...) can be set in the
YAML file or by a flag. Writes OUT: the checkpoint (compressed-tensors pack-quantized where the layers are
nn.Linear and compressed-tensors is installed, `pip install 'compfair[quant]'`; else the rounded weights in a
stock dense checkpoint), the tokenizer, and quantization.json (written last; a finished run is skipped, an
interrupted one starts again from scratch).
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
from compress.quantization.config import QuantizeConfig
from compress.quantization.run import run


def main(argv: list[str] | None = None) -> dict | None:
    config, data = parse_config_and_flags((QuantizeConfig, CalibrationData), argv)
    try:
        record = run(config, data)
    except (UnsupportedArchitecture, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if record is not None:
        b = record["bytes"]
        print(f"{config.method} ({record['bits']}-bit, {record['format']}): linear weights "
              f"{b.get('source_linear_weight_bytes')} -> {b['linear_weight_bytes']} bytes in {record['seconds']:.1f}s; "
              f"saved to {config.output_dir}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
