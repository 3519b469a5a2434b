"""Dequantises the SmolLM2 GGUF fixture into a transformers folder (config.json,
model.safetensors, tokenizer files), which pyvene and ferrovene then both load, so the two
sides run on the same f32 weights. transformers reads GGUF with the `gguf` package (it undoes
llama.cpp's rotary order of the q/k weights).

Usage: python dequantise.py GGUF_FILE OUT_DIR
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf_path, out = sys.argv[1], sys.argv[2]
if os.path.exists(os.path.join(out, "model.safetensors")):
    print(f"dequantised model: present ({out})")
    sys.exit(0)
folder, name = os.path.split(os.path.abspath(gguf_path))
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
# The GGUF has no output head: it is tied to the embeddings, which transformers 4.45 does not
# infer from GGUF metadata (it would leave lm_head randomly initialised).
model.config.tie_word_embeddings = True
model.tie_weights()
assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
tmp = out + ".tmp"
model.save_pretrained(tmp, safe_serialization=True)
tokenizer.save_pretrained(tmp)
os.replace(tmp, out)
print(f"dequantised model: written ({out})")
