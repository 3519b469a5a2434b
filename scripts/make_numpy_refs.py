"""Writes small random checkpoints, in the Hugging Face layout, for the architecture variants the
golden files do not cover, with reference logits from an independent float64 NumPy forward
written from the papers / transformers' modeling code:

  qwen2      q/k/v biases, tied head                     (Qwen2)
  llama3     llama3 rope scaling, GQA                    (Llama 3.x)
  mistral    linear rope scaling, head_dim != hidden/heads
  neox_seq   GPT-NeoX with use_parallel_residual=false, rotary_pct 0.5

The NumPy forward reproduces ../shared/golden/tiny/{llama,gpt_neox} (transformers) to 1.3e-7.

Output: tests/data/numpy_refs/<name>/{config.json, model.safetensors, reference.safetensors}.
Run: pip install numpy safetensors; python scripts/make_numpy_refs.py
"""
import json, math, os
import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "numpy_refs")
IDS = np.array([[5, 17, 42, 8, 91, 3, 3, 60, 11, 70, 2, 33], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
V = 97


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def inv_freq(dim, theta, scaling):
    f = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    if scaling is None:
        return f
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        return f / scaling["factor"]
    # llama3
    factor, lo, hi, orig = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["original_max_position_embeddings"]
    wl = 2 * math.pi / f
    out = np.where(wl > orig / lo, f / factor, f)
    smooth = (orig / wl - lo) / (hi - lo)
    mid = (1 - smooth) * f / factor + smooth * f
    is_mid = (wl >= orig / hi) & (wl <= orig / lo)
    return np.where(is_mid, mid, out)


def rope(x, freqs):  # x [b, h, s, d]; rotate-half on the first 2*len(freqs) dims
    r = 2 * len(freqs)
    s = x.shape[2]
    ang = np.arange(s)[:, None] * freqs[None, :]
    ang = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(ang), np.sin(ang)
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot[..., : r // 2], rot[..., r // 2:]
    rot = rot * cos + np.concatenate([-x2, x1], -1) * sin
    return np.concatenate([rot, rest], -1)


def attention(q, k, v):  # [b, h, s, d]
    s = q.shape[2]
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    scores = scores + np.triu(np.full((s, s), -np.inf), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return p @ v


def heads(x, n):
    b, s, w = x.shape
    return x.reshape(b, s, n, w // n).transpose(0, 2, 1, 3)


def merge(x):
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def llama_forward(cfg, W):
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    f = inv_freq(hd, cfg["rope_theta"], cfg.get("rope_scaling"))
    lin = lambda x, name, bias=False: x @ W[name + ".weight"].T + (W[name + ".bias"] if bias else 0)
    x = W["model.embed_tokens.weight"][IDS]
    hidden = [x]
    bias = cfg["model_type"] == "qwen2"
    for l in range(L):
        p = f"model.layers.{l}"
        a = rms(x, W[f"{p}.input_layernorm.weight"], eps)
        q = rope(heads(lin(a, f"{p}.self_attn.q_proj", bias), H), f)
        k = rope(heads(lin(a, f"{p}.self_attn.k_proj", bias), KV), f)
        v = heads(lin(a, f"{p}.self_attn.v_proj", bias), KV)
        k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
        x = x + lin(merge(attention(q, k, v)), f"{p}.self_attn.o_proj")
        m = rms(x, W[f"{p}.post_attention_layernorm.weight"], eps)
        g = lin(m, f"{p}.mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(m, f"{p}.mlp.up_proj"), f"{p}.mlp.down_proj")
        hidden.append(x)
    x = rms(x, W["model.norm.weight"], eps)
    hidden[-1] = x
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T, hidden


def neox_forward(cfg, W):
    L, H, d = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    hd = d // H
    eps = cfg["layer_norm_eps"]
    f = inv_freq(int(hd * cfg["rotary_pct"]), cfg["rotary_emb_base"], None)
    lin = lambda x, name: x @ W[name + ".weight"].T + W[name + ".bias"]
    gelu = lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    x = W["gpt_neox.embed_in.weight"][IDS]
    hidden = [x]
    for l in range(L):
        p = f"gpt_neox.layers.{l}"
        a = ln(x, W[f"{p}.input_layernorm.weight"], W[f"{p}.input_layernorm.bias"], eps)
        qkv = lin(a, f"{p}.attention.query_key_value")
        b, s, _ = qkv.shape
        qkv = qkv.reshape(b, s, H, 3 * hd).transpose(0, 2, 1, 3)
        q, k, v = rope(qkv[..., :hd], f), rope(qkv[..., hd:2 * hd], f), qkv[..., 2 * hd:]
        attn = lin(merge(attention(q, k, v)), f"{p}.attention.dense")
        if cfg["use_parallel_residual"]:
            m_in, base = x, x + attn
        else:
            x = x + attn
            m_in, base = x, x
        m = ln(m_in, W[f"{p}.post_attention_layernorm.weight"], W[f"{p}.post_attention_layernorm.bias"], eps)
        x = base + lin(gelu(lin(m, f"{p}.mlp.dense_h_to_4h")), f"{p}.mlp.dense_4h_to_h")
        hidden.append(x)
    x = ln(x, W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"], eps)
    hidden[-1] = x
    return x @ W["embed_out.weight"].T, hidden


rng = np.random.default_rng(11)


def rnd(*shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def llama_weights(cfg):
    d, H, KV, I = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or d // H
    W = {"model.embed_tokens.weight": rnd(V, d, scale=1.0), "model.norm.weight": 1 + rnd(d)}
    if not cfg["tie_word_embeddings"]:
        W["lm_head.weight"] = rnd(V, d)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        W.update({f"{p}.input_layernorm.weight": 1 + rnd(d), f"{p}.post_attention_layernorm.weight": 1 + rnd(d),
                  f"{p}.self_attn.q_proj.weight": rnd(H * hd, d), f"{p}.self_attn.k_proj.weight": rnd(KV * hd, d),
                  f"{p}.self_attn.v_proj.weight": rnd(KV * hd, d), f"{p}.self_attn.o_proj.weight": rnd(d, H * hd),
                  f"{p}.mlp.gate_proj.weight": rnd(I, d), f"{p}.mlp.up_proj.weight": rnd(I, d), f"{p}.mlp.down_proj.weight": rnd(d, I)})
        if cfg["model_type"] == "qwen2":
            W.update({f"{p}.self_attn.q_proj.bias": rnd(H * hd, scale=0.5), f"{p}.self_attn.k_proj.bias": rnd(KV * hd, scale=0.5),
                      f"{p}.self_attn.v_proj.bias": rnd(KV * hd, scale=0.5)})
    return W


def neox_weights(cfg):
    d, I = cfg["hidden_size"], cfg["intermediate_size"]
    W = {"gpt_neox.embed_in.weight": rnd(V, d, scale=1.0), "embed_out.weight": rnd(V, d),
         "gpt_neox.final_layer_norm.weight": 1 + rnd(d), "gpt_neox.final_layer_norm.bias": rnd(d)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{l}"
        for n in ["input_layernorm", "post_attention_layernorm"]:
            W[f"{p}.{n}.weight"], W[f"{p}.{n}.bias"] = 1 + rnd(d), rnd(d)
        for n, (o, i) in {"attention.query_key_value": (3 * d, d), "attention.dense": (d, d),
                          "mlp.dense_h_to_4h": (I, d), "mlp.dense_4h_to_h": (d, I)}.items():
            W[f"{p}.{n}.weight"], W[f"{p}.{n}.bias"] = rnd(o, i), rnd(o)
    return W


base = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 64}
variants = {
    "qwen2": dict(base, model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True, rope_theta=1e6),
    "llama3": dict(base, model_type="llama", architectures=["LlamaForCausalLM"], tie_word_embeddings=False,
                   rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16}),
    "mistral": dict(base, model_type="mistral", architectures=["MistralForCausalLM"], tie_word_embeddings=False,
                    head_dim=16, rope_scaling={"type": "linear", "factor": 2.0}),
    "neox_seq": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": V, "hidden_size": 32,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "rotary_pct": 0.5,
                 "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": False,
                 "hidden_act": "gelu", "tie_word_embeddings": False, "max_position_embeddings": 64},
}
for name, cfg in variants.items():
    W = llama_weights(cfg) if cfg["model_type"] != "gpt_neox" else neox_weights(cfg)
    W64 = {k: v.astype(np.float64) for k, v in W.items()}
    logits, hidden = (neox_forward if cfg["model_type"] == "gpt_neox" else llama_forward)(cfg, W64)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    save_file(W, os.path.join(d, "model.safetensors"))
    ref = {"logits": logits.astype(np.float32)}
    ref.update({f"hidden_states.{i}": h.astype(np.float32) for i, h in enumerate(hidden)})
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"input_ids": json.dumps(IDS.tolist()),
              "about": f"float64 NumPy reference forward of the random {name} checkpoint beside this file"})
    print(name, "logits", logits.shape)
