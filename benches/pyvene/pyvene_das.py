"""The pyvene side of the side-by-side harness: low-rank DAS
(pyvene.LowRankRotatedSpaceIntervention) at LAYER.block_output on the harness's pairs, trained
with torch's Adam at a constant learning rate on the cross-entropy of the label at the last
position, then held-out IIA (argmax of the intervened run's last-position logits = the label).
Written as pyvene's own tutorials train DAS; the frozen model in eval mode with its gradients
disabled; torch on `--threads` threads.

Usage: python pyvene_das.py MODEL_DIR PAIRS_DIR --layer 12 --rank 16 --lr 0.05 --batch 16
       --epochs 2 --threads 2 --seed 0 --out result.json
"""
import argparse
import json
import random
import time

T0 = time.time()

import torch
import pyvene as pv
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("pairs")
ap.add_argument("--layer", type=int, default=12)
ap.add_argument("--rank", type=int, default=16)
ap.add_argument("--lr", type=float, default=0.05)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", required=True)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)


def read(name):
    rows = [json.loads(l) for l in open(f"{args.pairs}/{name}.jsonl")]
    base = torch.tensor([r["base_ids"] for r in rows])
    source = torch.tensor([r["source_ids"][0] for r in rows])
    position = [r["positions"][0] for r in rows]
    label = torch.tensor([r["meta"]["label_id"] for r in rows])
    return base, source, position, label


train, test = read("train"), read("test")
model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
config = pv.IntervenableConfig(
    representations=[{"layer": args.layer, "component": "block_output", "low_rank_dimension": args.rank}],
    intervention_types=pv.LowRankRotatedSpaceIntervention,
)
intervenable = pv.IntervenableModel(config, model)
intervenable.disable_model_gradients()
optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=args.lr)
T_LOADED = time.time()


def last_logits(base, source, position):
    where = [[[p] for p in position]]
    _, out = intervenable({"input_ids": base}, [{"input_ids": source}], {"sources->base": (where, where)})
    return out.logits[:, -1]


n = len(train[0])
order = list(range(n))
rng = random.Random(args.seed)
losses = []
t = time.time()
for epoch in range(args.epochs):
    rng.shuffle(order)
    for i in range(0, n, args.batch):
        idx = order[i : i + args.batch]
        logits = last_logits(train[0][idx], train[1][idx], [train[2][j] for j in idx])
        loss = torch.nn.functional.cross_entropy(logits, train[3][idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
train_s = time.time() - t

hits = 0
with torch.inference_mode():
    for i in range(0, len(test[0]), args.batch):
        sl = slice(i, i + args.batch)
        logits = last_logits(test[0][sl], test[1][sl], test[2][sl])
        hits += int((logits.argmax(-1) == test[3][sl]).sum())
iia = hits / len(test[0])
result = {
    "side": "pyvene", "iia": iia, "train_s": train_s, "steps": len(losses),
    "examples_per_s": n * args.epochs / train_s, "load_s": T_LOADED - T0,
    "loss_first": losses[0], "loss_last": losses[-1], "wall_s": time.time() - T0,
    "versions": {"torch": torch.__version__, "pyvene": getattr(pv, "__version__", "0.1.8")},
}
json.dump(result, open(args.out, "w"), indent=1)
print(json.dumps(result))
