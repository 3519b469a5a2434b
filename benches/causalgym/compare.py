"""Site-by-site comparison of ferrovene's suite sweep with CausalGym's own code.

Reads the JSON `run_causalgym.py` wrote and the `results.csv` of a `trainer sweep syntax-suites`
run on the same tasks and layers (each side draws its own pairs: ferrovene with its sampler,
CausalGym with its), and prints a Markdown table of the log odds-ratio of each method at every
site both swept, with the difference, and the worst difference per method.

Usage: python compare.py causalgym.json RUN_FOLDER/results.csv [--tolerance 0.3]
"""
import argparse
import csv
import json

ap = argparse.ArgumentParser()
ap.add_argument("causalgym")
ap.add_argument("ours")
ap.add_argument("--tolerance", type=float, default=0.3)
ap.add_argument("--methods", default="mean,probe,random,das,vanilla")
args = ap.parse_args()
methods = args.methods.split(",")

theirs = json.load(open(args.causalgym))
ours = {}
for row in csv.DictReader(open(args.ours)):
    ours[(row["task"], row["region"], int(row["layer"]), row["method"])] = float(row["odds"])

worst = {m: (0.0, None) for m in methods}
for task, t in theirs["tasks"].items():
    print(f"\n**{task}** (log odds-ratio, ferrovene / CausalGym)\n")
    print("| site | " + " | ".join(methods) + " |")
    print("| --- | " + " | ".join("---" for _ in methods) + " |")
    for site in t["sites"]:
        region = site["region"].strip("{}")
        cells = []
        for m in methods:
            mine = ours.get((task, region, site["layer"], m))
            if mine is None or m not in site:
                cells.append("–")
                continue
            cg = site[m]["odds_ratio"]
            d = mine - cg
            if abs(d) > abs(worst[m][0]):
                worst[m] = (d, f"{task} {site['layer']}.{region}")
            flag = " **!**" if abs(d) > args.tolerance and m != "das" else ""
            cells.append(f"{mine:.2f} / {cg:.2f}{flag}")
        print(f"| {site['layer']}.{region} | " + " | ".join(cells) + " |")
print("\nworst difference (ferrovene − CausalGym):")
for m, (d, where) in worst.items():
    print(f"  {m}: {d:+.2f} at {where}")
