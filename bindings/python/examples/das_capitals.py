"""DAS on capital prompts from Python: where does "The capital of {country} is" keep the country?

Trains low-rank DAS (rank 32) at the block output of a few layers of SmolLM2 on the country token,
with the settings of recipes/das-capitals.toml, and prints the held-out interchange intervention
accuracy (IIA) per layer; at layer 6 it is the number `trainer das-capitals` prints for the same
seed. With matplotlib installed it also plots IIA by layer (das_capitals.png).

Run from the repository root after `pip install ./bindings/python`:

    python bindings/python/examples/das_capitals.py [--layers 2,6,10] [--seed 3]
"""

import argparse

import ferrovene

# recipes/das-capitals.toml, key for key.
RECIPE = dict(kind="das", rank=32, batch_size=8, epochs=4, lr=0.01, warmup=0.1, weight_decay=0.0, dev_fraction=0.25, split_by="base")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,6,10", help="comma-separated layers (default 2,6,10)")
    parser.add_argument("--seed", type=int, default=3, help="the recipe's seed (default 3)")
    parser.add_argument("--out", default="runs", help="where the run folders go")
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]

    model = ferrovene.load_model("smollm2-135m")
    pairs = ferrovene.Pairs.from_jsonl("datasets/capitals/capitals.jsonl")
    print(f"{len(pairs)} capital pairs; DAS rank {RECIPE['rank']} at layers {layers}, seed {args.seed}")
    iia = {}
    for layer in layers:
        trained = ferrovene.train(
            model, pairs, site=f"{layer}.block_output", seed=args.seed, out=args.out, name="das-capitals-py", **RECIPE
        )
        dev = trained.metrics["dev"]
        controls = trained.metrics["controls"]
        iia[layer] = dev["iia"]
        print(
            f"layer {layer:>2}: held-out IIA {dev['iia']:.3f} (no intervention {controls['no_intervention']['iia']:.3f}, "
            f"random rotation {controls['random_rotation']['iia']:.3f}) on {dev['n']} pairs; "
            f"loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f} over {len(trained.losses)} steps"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(list(iia), list(iia.values()), marker="o")
    ax.set(xlabel="layer", ylabel="held-out IIA", ylim=(0, 1), title="DAS on capitals (SmolLM2)")
    fig.tight_layout()
    fig.savefig("das_capitals.png", dpi=120)
    print("plot: das_capitals.png")


if __name__ == "__main__":
    main()
