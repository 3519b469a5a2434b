"""CausalGym's own code on SmolLM2 at chosen layers, for the comparison in docs/src/recipes.md.

CausalGym (aryamanarora/causalgym) runs every layer of a Pythia model; this driver runs its
`data.py` (pair sampling, tokenisation with its `<|endoftext|>` prefix, positions), `train.py`
(`train_das`, `train_feature_direction`), `eval.py` and `diff_methods.py` unchanged but for two
patches, at the layers asked for, with the methods the comparison needs. The loop over regions and
layers is `das.py`'s `experiment`, restricted to those layers and methods.

Patches (pyvene 0.1.8 and Llama):
- `train.py`: pyvene 0.1.8 keeps each intervention itself in `interventions[key]` (older pyvene
  kept `(intervention, hook)`), so `v[0]` becomes `v`. Without it `train_feature_direction` raises
  and `das.py` would skip every fitted method silently (its bare `except: continue`).
- `train.py`, `eval.py`: pyvene 0.1.8 returns the collected activations as a list holding one
  `[batch, units, d]` tensor (older pyvene: one entry per batch row), so
  `base_outputs[-1][batch_i]` becomes `base_outputs[-1][0][batch_i]`.
- the model is loaded with `AutoModelForCausalLM` (das.py hard-codes `GPTNeoXForCausalLM`), and
  its tokenizer with `add_bos_token=False` (SmolLM2's own tokenizer adds no BOS; the folder
  dequantised from the GGUF would add `<|im_start|>`, which also breaks CausalGym's
  `tokenizer.encode(label)[0]`).
- the probe is `probe_diff(fit_intercept=True, penalty='l2', solver='saga', C=1e-4)`, CausalGym's
  first probe for pythia-160m (SmolLM2-135M has no entry in its `probe_mapping`).

Usage (in the venv of benches/pyvene/run, with scikit-learn):
  git -C CAUSALGYM_GIT archive HEAD | tar -x -C SRC
  python run_causalgym.py --causalgym SRC --model SMOLLM2_HF_DIR --tasks npi_any_subj-relc,filler_gap_subj \
      --layers 6,12,18 --out causalgym.json [--resume]
The last results (and ferrovene's results.csv beside them) are in results/; compare.py prints the
table of docs/src/recipes.md ("Against CausalGym's own code") from them.
"""
import argparse
import json
import os
import random
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--causalgym", required=True, help="a checkout of aryamanarora/causalgym (its files are patched in place)")
ap.add_argument("--model", required=True, help="SmolLM2 as a transformers folder (benches/pyvene/dequantise.py)")
ap.add_argument("--tasks", required=True)
ap.add_argument("--layers", default="6,12,18")
ap.add_argument("--methods", default="vanilla,das,mean,probe,random")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--regions", help="only these spans (names without braces, comma-separated)")
ap.add_argument("--all-positions", action="store_true",
                help="every position from the first variable on, as das.py does; by default only the slots "
                     "ferrovene sweeps: the variables' (das.py starts at the label variable, as ferrovene does)")
ap.add_argument("--out", required=True)
ap.add_argument("--resume", action="store_true",
                help="keep the sites --out already holds (from a run with the same seed) and run only the others")
args = ap.parse_args()
args.out = os.path.abspath(args.out)  # before the chdir below

src = os.path.abspath(args.causalgym)
PATCHES = {
    "train.py": [("v[0]", "v"), ("base_outputs[-1][batch_i]", "base_outputs[-1][0][batch_i]")],
    "eval.py": [("base_outputs[-1][batch_i]", "base_outputs[-1][0][batch_i]")],
}
for name, edits in PATCHES.items():
    path = os.path.join(src, name)
    text = open(path).read()
    for old, new in edits:
        text = text.replace(old, new)
    open(path, "w").write(text)
sys.path.insert(0, src)
os.chdir(src)  # data.py reads data/templates/<file>.json relative to the working directory

import pyvene as pv  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from data import Dataset  # noqa: E402
from diff_methods import mean_diff, probe_diff, random_diff  # noqa: E402
from eval import eval as cg_eval  # noqa: E402
from interventions import intervention_config  # noqa: E402
from train import train_das, train_feature_direction  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
methods = args.methods.split(",")
fitted = {"mean": mean_diff, "random": random_diff,
          "probe": probe_diff(fit_intercept=True, penalty="l2", solver="saga", C=1e-4)}
fitted = {k: v for k, v in fitted.items() if k in methods}
# The dequantised folder's tokenizer adds `<|im_start|>` in front, as the GGUF's metadata asks;
# SmolLM2's own tokenizer adds nothing, and neither do ferrovene and the golden pairs.
tokenizer = AutoTokenizer.from_pretrained(args.model, add_bos_token=False)
tokenizer.pad_token = tokenizer.eos_token
gpt = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
layers = [int(x) for x in args.layers.split(",")]
site = "block_output"
result = {"about": __doc__.split("\n\n")[0], "seed": args.seed, "layers": layers, "tasks": {}}
if args.resume and os.path.exists(args.out):
    kept = json.load(open(args.out))
    if kept["seed"] != args.seed:
        sys.exit(f"--resume: {args.out} was run with seed {kept['seed']}, not {args.seed}")
    result["tasks"] = kept["tasks"]
for task in args.tasks.split(","):
    random.seed(args.seed)  # Dataset() draws its template with the global RNG
    torch.manual_seed(args.seed)
    data_source = Dataset.load_from(f"syntaxgym/{task}")
    # das.py's defaults: 100 training batches of 4 (seed 42), 25 eval batches (seed 1), no overlap.
    trainset = data_source.sample_batches(tokenizer, 4, 100, "cpu", seed=42)
    discard = {"".join(p.base) for b in trainset for p in b.pairs}
    evalset = data_source.sample_batches(tokenizer, 4, 25, "cpu", seed=1, discard=discard)
    sites = list(result["tasks"].get(task, {}).get("sites", []))
    done = {(s["pos"], s["layer"]) for s in sites}
    t0 = time.time() - result["tasks"].get(task, {}).get("seconds", 0.0)
    for pos_i in range(data_source.first_var_pos, data_source.length):
        if trainset[0].compute_pos("last")[0][0][pos_i][0] == -1:
            continue
        if not args.all_positions and not data_source.vars_per_span[pos_i]:
            continue
        if args.regions and data_source.span_names[pos_i].strip("{}") not in args.regions.split(","):
            continue
        for layer_i in layers:
            if (pos_i, layer_i) in done:
                continue
            row = {"region": data_source.span_names[pos_i], "pos": pos_i, "layer": layer_i}
            if "vanilla" in methods:
                iv = pv.IntervenableModel(intervention_config(site, pv.VanillaIntervention, layer_i, 0), gpt)
                iv.disable_model_gradients()
                _, summary, _ = cg_eval(iv, evalset, layer_i, pos_i, "last")
                iv._cleanup_states()
                row["vanilla"] = summary
            iv = pv.IntervenableModel(intervention_config(site, pv.LowRankRotatedSpaceIntervention, layer_i, 1), gpt)
            iv.disable_model_gradients()
            _, das_data, acts, eval_acts, _ = train_das(iv, trainset, evalset, layer_i, pos_i, "last", 25, 1, lr=5e-3)
            last = max(d["step"] for d in das_data)
            final = [d for d in das_data if d["step"] == last]
            row["das"] = {
                "odds_ratio": sum(d["base_p_base"] - d["base_p_src"] + d["p_src"] - d["p_base"] for d in final) / len(final),
                "iia": sum(d["p_src"] > d["p_base"] for d in final) / len(final),
            }
            for name in fitted:
                _, summary, _ = train_feature_direction(name, iv, acts, eval_acts, evalset, layer_i, pos_i, "last", site, fitted)
                row[name] = summary
            print(json.dumps({k: (round(v["odds_ratio"], 3) if isinstance(v, dict) else v) for k, v in row.items()}), flush=True)
            sites.append(row)
            # Written after every site, so that a long run keeps what it has.
            result["tasks"][task] = {"span_names": data_source.span_names, "sites": sites,
                                     "seconds": time.time() - t0, "template": "".join(data_source.template)}
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
print(f"written {args.out}")
