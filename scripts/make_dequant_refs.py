"""Writes reference blocks for the GGUF dequantiser tests (tests/data/dequant/).

For each ggml type: random blocks (scale fields set to finite f16 values), the raw bytes as
TYPE.bin, and what the `gguf` Python package (a port of ggml-quants.c) dequantises them to,
as little-endian f32 in TYPE.f32. Run: pip install gguf numpy; python scripts/make_dequant_refs.py
"""
import os
import numpy as np
import gguf
from gguf.quants import dequantize
from gguf import GGMLQuantizationType as T

rng = np.random.default_rng(7)
out = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "dequant")
os.makedirs(out, exist_ok=True)
N = 4  # blocks per type
# type: offsets of f16 fields inside one block
layouts = {T.F16: [], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q6_K: [208]}
for ty, f16_fields in layouts.items():
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    if ty == T.F16:
        raw = rng.standard_normal(N * 32).astype(np.float16).tobytes()
        shape = (N * 32,)
    else:
        blocks = rng.integers(0, 256, size=(N, block_bytes), dtype=np.uint8)
        for off in f16_fields:
            vals = (rng.standard_normal(N) * 0.05).astype(np.float16)
            blocks[:, off:off + 2] = vals.view(np.uint8).reshape(N, 2)
        raw = blocks.tobytes()
        shape = (N * per_block,)
    got = dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), ty).reshape(-1).astype("<f4")
    assert got.shape == shape, (ty, got.shape)
    name = ty.name
    open(os.path.join(out, f"{name}.bin"), "wb").write(raw)
    open(os.path.join(out, f"{name}.f32"), "wb").write(got.tobytes())
    print(name, len(raw), "bytes ->", got.shape[0], "values")
