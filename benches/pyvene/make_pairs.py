"""Writes the side-by-side workload: counterfactual pairs "The capital of {base} is" /
"The capital of {source} is" as token ids (no BOS, as SmolLM2 is used), intervening at the
country token (position 3), labelled with the source prompt's top-1 next token under the
model, for both pyvene and ferrovene: train.jsonl and test.jsonl in ferrovene's pair format.

Countries are those whose name is one token after a space, so every prompt has 5 tokens and
neither side pads. Pairs whose label equals the base's own top-1 token are left out (there the
intervention has nothing to change). 768 training and 256 held-out pairs, drawn with a seed.

Usage: python make_pairs.py MODEL_DIR OUT_DIR [--train 768] [--test 256] [--seed 0]
"""
import argparse
import json
import os
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

COUNTRIES = """Afghanistan Albania Algeria Angola Argentina Armenia Australia Austria Azerbaijan
Bangladesh Belarus Belgium Bolivia Bosnia Brazil Bulgaria Burma Cambodia Cameroon Canada Chad
Chile China Colombia Congo Croatia Cuba Cyprus Denmark Ecuador Egypt England Estonia Ethiopia
Finland France Georgia Germany Ghana Greece Guatemala Haiti Honduras Hungary Iceland India
Indonesia Iran Iraq Ireland Israel Italy Jamaica Japan Jordan Kazakhstan Kenya Korea Kuwait Laos
Latvia Lebanon Libya Lithuania Luxembourg Madagascar Malaysia Mali Malta Mexico Moldova Mongolia
Morocco Mozambique Nepal Netherlands Nicaragua Niger Nigeria Norway Oman Pakistan Panama Paraguay
Peru Philippines Poland Portugal Qatar Romania Russia Rwanda Scotland Senegal Serbia Singapore
Slovakia Slovenia Somalia Spain Sudan Sweden Switzerland Syria Taiwan Tanzania Thailand Tunisia
Turkey Uganda Ukraine Uruguay Venezuela Vietnam Wales Yemen Zambia Zimbabwe""".split()

TEMPLATE = "The capital of {} is"

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("out")
ap.add_argument("--train", type=int, default=768)
ap.add_argument("--test", type=int, default=256)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
countries = [c for c in COUNTRIES if len(encode(" " + c)) == 1]
prompts = {c: encode(TEMPLATE.format(c)) for c in countries}
assert all(len(p) == 5 for p in prompts.values()), "every prompt is 5 tokens"
with torch.no_grad():
    logits = model(torch.tensor([prompts[c] for c in countries])).logits[:, -1]
top1 = {c: int(i) for c, i in zip(countries, logits.argmax(-1))}
# A label is given to ferrovene as text; keep the countries whose top-1 token reads back as itself.
countries = [c for c in countries if encode(tok.decode([top1[c]]))[:1] == [top1[c]]]
pairs = [(b, s) for b in countries for s in countries if b != s and top1[b] != top1[s]]
random.Random(args.seed).shuffle(pairs)
need = args.train + args.test
assert len(pairs) >= need, f"only {len(pairs)} pairs from {len(countries)} countries"
os.makedirs(args.out, exist_ok=True)
for name, chunk in [("train", pairs[: args.train]), ("test", pairs[args.train : need])]:
    with open(os.path.join(args.out, f"{name}.jsonl"), "w") as f:
        for b, s in chunk:
            f.write(json.dumps({
                "base_ids": prompts[b], "source_ids": [prompts[s]], "positions": [3],
                "label": tok.decode([top1[s]]), "base_label": tok.decode([top1[b]]),
                "meta": {"base": b, "source": s, "label_id": top1[s], "base_label_id": top1[b]},
            }) + "\n")
print(f"pairs: {len(countries)} countries, {len(pairs)} usable pairs; wrote {args.train} train, {args.test} test to {args.out}")
