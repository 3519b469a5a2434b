"""Folders ferrovene writes load in pyvene 0.1.8 and pyreft 0.1.0 and give pyvene's numbers.

For each folder pyvene or pyreft saved in tests/golden/pyvene_saves (low-rank DAS, Boundless DAS,
two low-rank DAS at two layers, LoReFT), ferrovene imports it (`trainer import`) and writes it back
(`trainer export --to pyvene|pyreft`); pyvene's `IntervenableModel.load` (pyreft's
`ReftModel.load`) then loads ferrovene's folder into the tiny GPT-2 and runs it with the golden's
unit locations. The logits must equal the golden's (what pyvene computed before saving) within
1e-5. Not in CI (torch is 3 GB): run `benches/pyvene/export_check.py TRAINER_BINARY` in the venv
`benches/pyvene/run` makes; its last output is in the README.
"""
import json
import os
import subprocess
import sys
import tempfile

import pyreft
import pyvene as pv
import torch
from safetensors import safe_open
from transformers import GPT2LMHeadModel

trainer = sys.argv[1] if len(sys.argv) > 1 else "target/release/trainer"
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
golden = os.path.join(root, "tests", "golden")
model = GPT2LMHeadModel.from_pretrained(os.path.join(golden, "tiny", "gpt2")).eval()
worst_all = 0.0
with tempfile.TemporaryDirectory() as tmp:
    for case in ["lowrank_das", "boundless_das", "two_sites", "loreft"]:
        src = os.path.join(golden, "pyvene_saves", case)
        ours = os.path.join(tmp, case + ".safetensors")
        out = os.path.join(tmp, case)
        flavour = "pyreft" if case == "loreft" else "pyvene"
        subprocess.run([trainer, "import", src, "--model", os.path.join(golden, "tiny", "gpt2"), "--out", ours],
                       check=True, capture_output=True)
        subprocess.run([trainer, "export", ours, "--to", flavour, out], check=True, capture_output=True)
        with safe_open(os.path.join(src, "reference.safetensors"), "pt") as f:
            meta = f.metadata()
            want = f.get_tensor("logits")
        base = torch.tensor(json.loads(meta["base_ids"]))
        source = torch.tensor(json.loads(meta["source_ids"]))
        loc = json.loads(meta["unit_locations"])
        loc = {"sources->base": tuple(loc["sources->base"])}
        if flavour == "pyreft":
            im = pyreft.ReftModel.load(out, model)
            # pyreft rebuilds LoReFT in bfloat16 whatever was saved, rounding the weights on load:
            # back to float32, and the saved values loaded again.
            for key, iv in im.interventions.items():
                iv = iv[0] if isinstance(iv, (list, tuple)) else iv
                iv.float()
                iv.load_state_dict(torch.load(os.path.join(out, f"intkey_{key}.bin"), weights_only=True))
            with torch.no_grad():
                _, cf = im({"input_ids": base}, unit_locations=loc)
        else:
            im = pv.IntervenableModel.load(out, model)
            with torch.no_grad():
                _, cf = im({"input_ids": base}, [{"input_ids": source}] * len(im.interventions), loc)
        worst = (cf.logits.float() - want).abs().max().item()
        worst_all = max(worst_all, worst)
        print(f"{case}: {flavour} loads ferrovene's folder; logits within {worst:.2e} of pyvene's own")
print(f"worst: {worst_all:.2e} ({'PASS' if worst_all < 1e-5 else 'FAIL'} at 1e-5)")
sys.exit(0 if worst_all < 1e-5 else 1)
