"""Folders ferrovene writes load in pyvene 0.1.8 and pyreft 0.1.0 and give the same numbers.

Part 1, the golden folders: for each folder pyvene or pyreft saved in tests/golden/pyvene_saves
(low-rank DAS, Boundless DAS, two low-rank DAS at two layers, LoReFT), ferrovene imports it
(`trainer import`) and writes it back (`trainer export --to pyvene|pyreft`); pyvene's
`IntervenableModel.load` (pyreft's `ReftModel.load`) then loads ferrovene's folder into the tiny
GPT-2 and runs it with the golden's unit locations. The logits must equal the golden's (what
pyvene computed before saving) within 1e-5.

Part 2, ferrovene's own trainings: on the tiny GPT-2 (its token and position embeddings scaled
by 8, so that its next-token distribution is not flat and an intervention at the last token moves
it; with a word-level tokenizer `t0 … t96`, so that both sides read the same ids), ferrovene
trains low-rank DAS, Boundless DAS and all six ReFT families (`trainer <recipe>`, 5 epochs on
random pairs and prompts), exports each (`trainer export --to pyvene|pyreft`), and
`trainer apply --json --top 97` gives its next-token log-probabilities with the intervention at
the last token. pyvene or pyreft loads the folder and computes them too: they must agree within
1e-5 over the whole vocabulary, and the intervention must move them by at least 100 times that
(printed), or the check would prove nothing. Printed beside: how far the two plain forwards are
apart.

pyreft 0.1.0 rebuilds the learned projections in bfloat16 whatever was saved, so after
`ReftModel.load` each intervention is turned back to float32 and its saved state dict loaded
again, as `trainer export` tells users to. It cannot rebuild NoReFT or NoDiReFT from config.json
at all (their constructor needs `add_bias`, which config.json cannot carry): for those the check
shows `ReftModel.load`'s error, then builds the intervention with `pyreft.get_reft_model`, as
`trainer export` tells users to, and loads the saved state dict with `strict=True`.

Part 3, the classes no golden folder has: pyvene builds each of `RotatedSpaceIntervention`,
`SigmoidMaskRotatedSpaceIntervention`, `SigmoidMaskIntervention` and `VanillaIntervention`, and
pyreft each of its six families, with random parameters, on the same model; each computes its
logits and saves its folder; ferrovene imports the folder and writes it back, and pyvene or
pyreft (as above) loads ferrovene's folder: the logits must equal what pyvene or pyreft computed
before saving, within 1e-5, and `trainer apply` of ferrovene's import must give their
log-probabilities within 1e-5 (ferrovene computes each class as pyvene or pyreft does).

Not in CI (torch is 3 GB): run `benches/pyvene/export_check.py TRAINER_BINARY` in the venv
`benches/pyvene/run` makes; its last output is in the README.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import pyreft
import pyvene as pv
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

trainer = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/trainer")
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
golden = os.path.join(root, "tests", "golden")
TOL = 1e-5
worst_all = 0.0


def run(*args):
    out = subprocess.run([trainer, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"trainer {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def pyreft_reload(im, folder):
    """pyreft rebuilds learned_source in bfloat16: back to float32, and the saved values again."""
    for key, iv in im.interventions.items():
        iv = iv[0] if isinstance(iv, (list, tuple)) else iv
        iv.float()
        iv.load_state_dict(torch.load(os.path.join(folder, f"intkey_{key}.bin"), weights_only=True))


def golden_folders(tmp):
    global worst_all
    model = GPT2LMHeadModel.from_pretrained(os.path.join(golden, "tiny", "gpt2")).eval()
    for case in ["lowrank_das", "boundless_das", "two_sites", "loreft"]:
        src = os.path.join(golden, "pyvene_saves", case)
        ours = os.path.join(tmp, case + ".safetensors")
        out = os.path.join(tmp, case)
        flavour = "pyreft" if case == "loreft" else "pyvene"
        run("import", src, "--model", os.path.join(golden, "tiny", "gpt2"), "--out", ours)
        run("export", ours, "--to", flavour, out)
        with safe_open(os.path.join(src, "reference.safetensors"), "pt") as f:
            meta = f.metadata()
            want = f.get_tensor("logits")
        base = torch.tensor(json.loads(meta["base_ids"]))
        source = torch.tensor(json.loads(meta["source_ids"]))
        loc = json.loads(meta["unit_locations"])
        loc = {"sources->base": tuple(loc["sources->base"])}
        with torch.no_grad():
            if flavour == "pyreft":
                im = pyreft.ReftModel.load(out, model)
                pyreft_reload(im, out)
                _, cf = im({"input_ids": base}, unit_locations=loc)
            else:
                im = pv.IntervenableModel.load(out, model)
                _, cf = im({"input_ids": base}, [{"input_ids": source}] * len(im.interventions), loc)
        worst = (cf.logits.float() - want).abs().max().item()
        worst_all = max(worst_all, worst)
        print(f"golden {case}: {flavour} loads ferrovene's folder; logits within {worst:.2e} of pyvene's own")


def sharp_tiny_gpt2(dir):
    """The tiny GPT-2, its embeddings times 8 (a peaked next-token distribution), with a tokenizer."""
    os.makedirs(dir)
    shutil.copy(os.path.join(golden, "tiny", "gpt2", "config.json"), dir)
    weights = load_file(os.path.join(golden, "tiny", "gpt2", "model.safetensors"))
    save_file({k: (v * 8 if k.endswith(("wte.weight", "wpe.weight")) else v).contiguous() for k, v in weights.items()},
              os.path.join(dir, "model.safetensors"), metadata={"format": "pt"})
    vocab = {f"t{i}": i for i in range(97)}
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}
    json.dump(tok, open(os.path.join(dir, "tokenizer.json"), "w"))


def data(tmp):
    rng = random.Random(0)
    words = lambda n: " ".join(f"t{rng.randrange(1, 97)}" for _ in range(n))
    with open(os.path.join(tmp, "pairs.jsonl"), "w") as f:
        for i in range(64):
            label = rng.randrange(1, 97)
            f.write(json.dumps({"base": words(6), "sources": [words(6)], "positions": [5], "base_label": f" t{label}",
                                "label": f" t{(label + 7) % 96 + 1}", "meta": {"group": str(i % 8)}}) + "\n")
    with open(os.path.join(tmp, "prompts.jsonl"), "w") as f:
        for i in range(32):
            f.write(json.dumps({"prompt": words(5), "target": " " + words(3), "positions": ["last"],
                                "meta": {"group": str(i % 8)}}) + "\n")


RECIPE = """description = "export check: {name}"
kind = "{kind}"
model = "{model}"
pairs = "{pairs}"
site = "1.block_output"
rank = {rank}
batch_size = 8
epochs = 5
lr = {lr}
seed = 1
dev_fraction = 0.25
split_by = "group"
{extra}"""


def trained(tmp):
    global worst_all
    model_dir = os.path.join(tmp, "sharp_gpt2")
    sharp_tiny_gpt2(model_dir)
    data(tmp)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    base_words, source_words = "t5 t17 t3 t44 t60 t9", "t71 t2 t38 t90 t11 t26"
    base = torch.tensor([[int(w[1:]) for w in base_words.split()]])
    source = torch.tensor([[int(w[1:]) for w in source_words.split()]])
    cases = [("das_low_rank", "das", "pairs", 4, 0.05, ""),
             ("das_boundless", "boundless", "pairs", 0, 0.05, "temperature = { start = 1.0, end = 0.1 }\n")]
    cases += [(f, "reft", "prompts", 2, 0.02, f'family = "{f}"\n')
              for f in ["loreft", "noreft", "consreft", "lobireft", "direft", "nodireft"]]
    for name, kind, pairs, rank, lr, extra in cases:
        recipe = os.path.join(tmp, f"{name}.toml")
        text = RECIPE.format(name=name, kind=kind, model=model_dir, pairs=os.path.join(tmp, pairs + ".jsonl"),
                             rank=rank, lr=lr, extra=extra)
        if rank == 0:
            text = text.replace("rank = 0\n", "")
        open(recipe, "w").write(text)
        log = run(recipe, "--out", os.path.join(tmp, "runs"))
        run_dir = next(l.split("run folder: ")[1].split(" (")[0] for l in log.splitlines() if "run folder: " in l)
        export = os.path.join(run_dir, "intervention.safetensors")
        folder = os.path.join(tmp, "trained", name)
        flavour = "pyreft" if kind == "reft" else "pyvene"
        run("export", export, "--to", flavour, folder)
        # ferrovene's log-probabilities over the whole vocabulary, with and without.
        args = ["apply", "--intervention", export, "--prompt", base_words, "--top", "97", "--json"]
        args += ["--source", source_words, "--positions", "5"] if kind != "reft" else ["--positions", "last"]
        got = json.loads(run(*args))
        after = torch.zeros(97, dtype=torch.float64)
        before = torch.zeros(97, dtype=torch.float64)
        for row in got["after"]:
            after[row["id"]] = torch.tensor(row["p_after"], dtype=torch.float64).log()
            before[row["id"]] = torch.tensor(row["p_before"], dtype=torch.float64).log()
        note = ""
        with torch.no_grad():
            if kind == "reft":
                im, note = load_pyreft(folder, model)
                loc = {"sources->base": (None, [[[base.shape[1] - 1]]])}
                _, cf = im({"input_ids": base}, unit_locations=loc)
            else:
                im = pv.IntervenableModel.load(folder, model)
                _, cf = im({"input_ids": base}, [{"input_ids": source}], {"sources->base": ([[[5]]], [[[5]]])})
            plain = model(input_ids=base).logits[0, -1].double().log_softmax(-1)
        theirs = cf.logits[0, -1].double().log_softmax(-1)
        forward = (plain - before).abs().max().item()
        worst = (theirs - after).abs().max().item()
        moved = (after - before).abs().max().item()
        worst_all = max(worst_all, worst)
        if moved < 100 * TOL:
            sys.exit(f"{name}: the intervention moves the log-probabilities by only {moved:.1e}: the check proves nothing")
        print(f"trained {name}: {flavour} loads ferrovene's folder{note}; log-probabilities within {worst:.2e} of ferrovene's (the intervention moves them by up to {moved:.3f}; without it the two forwards differ by {forward:.2e})")


def rebuild(folder, model):
    """NoReFT and NoDiReFT as `trainer export` says to build them: pyreft.get_reft_model."""
    cfg = json.load(open(os.path.join(folder, "config.json")))
    reps = []
    for rep, kind, dim in zip(cfg["representations"], cfg["intervention_types"], cfg["intervention_dimensions"]):
        cls = getattr(pyreft, kind.split(".")[-1].rstrip("'>"))
        iv = cls(embed_dim=dim, low_rank_dimension=rep[4], add_bias=True, dtype=torch.float32)
        reps.append({"layer": rep[0], "component": rep[1], "low_rank_dimension": rep[4], "intervention": iv})
    return pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps), set_device=False)


def load_pyreft(folder, model):
    """`ReftModel.load(folder)`, or `rebuild` where pyreft cannot (NoReFT, NoDiReFT: KeyError
    'add_bias'), with the folder's weights loaded as `pyreft_reload` does; and a note saying which."""
    note = ""
    try:
        im = pyreft.ReftModel.load(folder, model)
    except KeyError as e:
        note = f" (ReftModel.load: KeyError {e}; built with get_reft_model)"
        im = rebuild(folder, model)
    pyreft_reload(im, folder)
    return im, note


def made_by_them(tmp):
    """Folders pyvene and pyreft save for the classes without a golden, through ferrovene and back."""
    global worst_all
    model_dir = os.path.join(tmp, "sharp_gpt2")
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    base = torch.tensor([[5, 17, 3, 44, 60, 9]])
    source = torch.tensor([[71, 2, 38, 90, 11, 26]])
    last = {"sources->base": ([[[5]]], [[[5]]])}
    cases = [(c, "pyvene") for c in ["RotatedSpaceIntervention", "SigmoidMaskRotatedSpaceIntervention",
                                     "SigmoidMaskIntervention", "VanillaIntervention"]]
    cases += [(c, "pyreft") for c in ["LoreftIntervention", "NoreftIntervention", "ConsreftIntervention",
                                      "LobireftIntervention", "DireftIntervention", "NodireftIntervention"]]
    for cls, flavour in cases:
        theirs_dir = os.path.join(tmp, "theirs", cls)
        with torch.no_grad():
            if flavour == "pyvene":
                cfg = pv.IntervenableConfig(representations=[{"layer": 1, "component": "block_output"}],
                                            intervention_types=getattr(pv, cls))
                im = pv.IntervenableModel(cfg, model)
                iv = list(im.interventions.values())[0]
                if cls == "RotatedSpaceIntervention":
                    iv.set_interchange_dim(8)
                if "SigmoidMask" in cls:
                    for name in ["masks", "mask"]:
                        if hasattr(iv, name):
                            getattr(iv, name).data = torch.randn(32) * 2
                    iv.temperature.data = torch.tensor(0.7)
                _, want = im({"input_ids": base}, [{"input_ids": source}], last)
            else:
                iv = getattr(pyreft, cls)(embed_dim=32, low_rank_dimension=2, add_bias=True, dtype=torch.float32)
                for p in iv.parameters():
                    p.data = p.data + torch.randn_like(p) * 0.5 if p.dim() == 1 else p.data
                rep = {"layer": 1, "component": "block_output", "low_rank_dimension": 2, "intervention": iv}
                im = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=[rep]), set_device=False)
                _, want = im({"input_ids": base}, unit_locations={"sources->base": (None, [[[5]]])})
        im.save(theirs_dir)
        ours = os.path.join(tmp, "theirs", cls + ".safetensors")
        back = os.path.join(tmp, "back", cls)
        run("import", theirs_dir, "--model", model_dir, "--out", ours)
        run("export", ours, "--to", flavour, back)
        note = ""
        with torch.no_grad():
            if flavour == "pyvene":
                im2 = pv.IntervenableModel.load(back, model)
                _, got = im2({"input_ids": base}, [{"input_ids": source}], last)
            else:
                im2, note = load_pyreft(back, model)
                _, got = im2({"input_ids": base}, unit_locations={"sources->base": (None, [[[5]]])})
        worst = (got.logits - want.logits).abs().max().item()
        # ferrovene's own computation with the imported file: its log-probabilities at the last
        # token against pyvene's / pyreft's.
        args = ["apply", "--intervention", ours, "--model", model_dir, "--prompt", " ".join(f"t{i}" for i in base[0].tolist()),
                "--positions", "5", "--top", "97", "--json"]
        if flavour == "pyvene":
            args += ["--source", " ".join(f"t{i}" for i in source[0].tolist())]
        mine = torch.zeros(97, dtype=torch.float64)
        for row in json.loads(run(*args))["after"]:
            mine[row["id"]] = torch.tensor(row["p_after"], dtype=torch.float64).log()
        applied = (mine - want.logits[0, -1].double().log_softmax(-1)).abs().max().item()
        moved = (want.logits - model(input_ids=base).logits).abs().max().item()
        worst_all = max(worst_all, worst, applied)
        print(f"{flavour}'s {cls}: imported, written back and loaded{note}; logits within {worst:.2e} of {flavour}'s own; "
              f"trainer apply of the import within {applied:.2e} (log-probabilities; the intervention moves the logits by up to {moved:.3f})")


with tempfile.TemporaryDirectory() as tmp:
    golden_folders(tmp)
    trained(tmp)
    made_by_them(tmp)
print(f"worst: {worst_all:.2e} ({'PASS' if worst_all < TOL else 'FAIL'} at {TOL:.0e})")
sys.exit(0 if worst_all < TOL else 1)
