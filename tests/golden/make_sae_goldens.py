"""Gemma Scope-style SAE files written by numpy itself, with the outputs numpy computes for them,
for `crates/interventions/tests/sae_formats.rs` (reading .npz is ferrovene's own code path; this
checks it against files numpy wrote, in both of numpy's layouts).

Run: python tests/golden/make_sae_goldens.py   (numpy only; writes tests/golden/sae/)

Gemma Scope's JumpReLU: pre = x W_enc + b_enc; z = relu(pre) * (pre > threshold);
out = z W_dec + b_dec. The two inputs interchange latents 1, 4 and 7 (base keeps the rest).
"""
import json
import os

import numpy as np

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sae")
rng = np.random.default_rng(2026)
d, m = 6, 10
params = {
    "W_enc": (rng.standard_normal((d, m)) * 0.3).astype(np.float32),
    "b_enc": (rng.standard_normal(m) * 0.1).astype(np.float32),
    "W_dec": (rng.standard_normal((m, d)) * 0.3).astype(np.float32),
    "b_dec": (rng.standard_normal(d) * 0.1).astype(np.float32),
    "threshold": (rng.uniform(0.0, 0.2, m)).astype(np.float32),
}
base = rng.standard_normal(d).astype(np.float32)
source = rng.standard_normal(d).astype(np.float32)


def encode(x):
    pre = x.astype(np.float64) @ params["W_enc"].astype(np.float64) + params["b_enc"]
    return np.maximum(pre, 0.0) * (pre > params["threshold"])


zb, zs = encode(base), encode(source)
z = zb.copy()
for j in (1, 4, 7):
    z[j] = zs[j]
out = z @ params["W_dec"].astype(np.float64) + params["b_dec"]

folder = os.path.join(here, "gemma-scope-2b-pt-res", "layer_1", "width_16k", "average_l0_3")
os.makedirs(folder, exist_ok=True)
np.savez(os.path.join(folder, "params.npz"), **params)
np.savez_compressed(os.path.join(here, "compressed.npz"), **params)
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(
        {
            "base": base.tolist(),
            "source": source.tolist(),
            "latents": [1, 4, 7],
            "base_latents": zb.tolist(),
            "interchanged": out.tolist(),
        },
        f,
        indent=1,
    )
print("wrote", here)
