"""Writes capitals.jsonl: counterfactual pairs "The capital of {base} is" / "... {source} is",
intervening at the country, labelled with the source's capital (first token scored).
The twelve countries are those whose capital SmolLM2-135M-Instruct predicts first.
Run: python datasets/capitals/make.py
"""
import json, os

COUNTRIES = [("France", " Paris"), ("Italy", " Rome"), ("Germany", " Berlin"), ("Spain", " Madrid"),
             ("Japan", " Tokyo"), ("Russia", " Moscow"), ("China", " Beijing"), ("Greece", " Athens"),
             ("Canada", " Ottawa"), ("Portugal", " Lisbon"), ("England", " London"), ("Ireland", " Dublin")]
TEMPLATE = "The capital of {} is"
START = TEMPLATE.index("{}")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "capitals.jsonl")
with open(out, "w") as f:
    for base, base_capital in COUNTRIES:
        for source, capital in COUNTRIES:
            if base == source:
                continue
            span = lambda c: {"country": [START, START + len(c)]}
            f.write(json.dumps({
                "base": TEMPLATE.format(base), "spans": span(base),
                "sources": [TEMPLATE.format(source)], "source_spans": [span(source)],
                "positions": [{"span": "country"}],
                "base_label": base_capital, "label": capital,
                "meta": {"base": base, "source": source, "template": "capital"},
            }) + "\n")
print("wrote", out)
