"""Post-training weight quantization: round-to-nearest int8/int4, GPTQ and AWQ (`compress/quantize.py`)."""
