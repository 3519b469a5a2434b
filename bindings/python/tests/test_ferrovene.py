"""The Python package against the command line: the same predictions, the same trained numbers
for the same seed, exports that round-trip, errors that name what is wrong, and Ctrl-C that
leaves a checkpoint.

Run from the repository root after `pip install ./bindings/python pytest numpy` (the recipes
and datasets are found from there); the `trainer` binary is $FERROVENE_TRAINER, else the one
cargo built last.
"""

import json
import os
import pathlib
import signal
import subprocess
import threading

import numpy as np
import pytest

import ferrovene

ROOT = pathlib.Path(__file__).resolve().parents[3]
CAPITALS = ROOT / "datasets" / "capitals" / "capitals.jsonl"


def trainer_binary():
    if os.environ.get("FERROVENE_TRAINER"):
        return os.environ["FERROVENE_TRAINER"]
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, capture_output=True, text=True
    )
    target = pathlib.Path(json.loads(meta.stdout)["target_directory"]) if meta.returncode == 0 else ROOT / "target"
    for profile in ("debug", "release"):
        path = target / profile / "trainer"
        if path.exists():
            return str(path)
    pytest.fail("no trainer binary: build it (cargo build -p trainer) or set FERROVENE_TRAINER")


def trainer(*args, cwd=ROOT):
    done = subprocess.run([trainer_binary(), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def model():
    return ferrovene.load_model("smollm2-135m")


@pytest.fixture(autouse=True)
def from_the_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def only_run(folder):
    runs = [p for p in pathlib.Path(folder).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_predict_gives_the_command_lines_numbers(model):
    prompt = "The capital of France is"
    ours = model.predict(prompt, top=5)
    cli = json.loads(trainer("predict", "--model", "smollm2-135m", "--prompt", prompt, "--top", "5", "--json"))
    assert [c["id"] for c in ours] == [c["id"] for c in cli["top"]]
    assert [c["token"] for c in ours] == [c["token"] for c in cli["top"]]
    np.testing.assert_allclose([c["p"] for c in ours], [c["p"] for c in cli["top"]], rtol=0, atol=1e-6)
    assert model.tokenize(prompt) == cli["ids"]
    assert "6.block_output" in model.sites() and model.n_layers == 30 and model.width == 576


def capitals_subset(tmp_path, n=48):
    lines = CAPITALS.read_text().splitlines()[:n]
    path = tmp_path / "capitals-subset.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_das_from_python_gives_the_command_lines_held_out_iia(model, tmp_path):
    subset = capitals_subset(tmp_path)
    cli_out = tmp_path / "cli"
    trainer("das-capitals", "--quiet", "--epochs", "1", "--set", f'pairs="{subset}"', "--out", str(cli_out))
    cli = json.loads((only_run(cli_out / "das-capitals") / "report.json").read_text())

    trained = ferrovene.train(
        model,
        ferrovene.Pairs.from_jsonl(subset),
        kind="das",
        site="6.block_output",
        rank=32,
        lr=0.01,
        epochs=1,
        batch_size=8,
        seed=3,
        warmup=0.1,
        weight_decay=0.0,
        split_by="base",
        out=tmp_path / "py",
    )
    assert trained.metrics["dev"]["iia"] == cli["metrics"]["dev"]["iia"]
    assert trained.metrics["dev"]["n"] == cli["metrics"]["dev"]["n"]
    assert len(trained.losses) == cli["training"]["steps"]
    np.testing.assert_allclose(trained.losses[-1], cli["training"]["loss"]["last"], rtol=0, atol=1e-6)

    # The export round-trips through save and load with the same parameters.
    iv = trained.intervention
    params = iv.parameters()
    assert params and all(a.dtype == np.float32 for a in params.values())
    iv.save(tmp_path / "copy.safetensors")
    again = ferrovene.Intervention.load(tmp_path / "copy.safetensors").parameters()
    assert params.keys() == again.keys()
    for name in params:
        np.testing.assert_array_equal(params[name], again[name])


def test_bad_records_and_arguments_are_named(model, tmp_path):
    good = {"base": "The capital of France is", "sources": ["The capital of Italy is"], "positions": [4], "label": " Rome"}
    with pytest.raises(ValueError, match=r"record 1: unknown field `bogus`"):
        ferrovene.Pairs.from_records([good, {**good, "bogus": 1}])
    with pytest.raises(ValueError, match=r"record 0: cannot tell the kind"):
        ferrovene.Pairs.from_records([{"label": "x"}])
    with pytest.raises(TypeError, match=r"record 0"):
        ferrovene.Pairs.from_records(["not a dict"])
    pairs = ferrovene.Pairs.from_records([good] * 8)
    assert len(pairs) == 8 and pairs.kind == "pair"
    with pytest.raises(ValueError, match=r"bogus_key"):
        ferrovene.train(model, pairs, kind="das", site="6.block_output", rank=4, split_by="x", bogus_key=1, out=tmp_path)
    with pytest.raises(ValueError, match=r"device=\"cuda\""):
        ferrovene.load_model("smollm2-135m", device="cuda")


def test_ctrl_c_during_training_leaves_a_checkpoint(model, tmp_path):
    subset = capitals_subset(tmp_path)
    timer = threading.Timer(8.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match=r"stopped after a checkpoint in"):
            ferrovene.train(
                model,
                ferrovene.Pairs.from_jsonl(subset),
                kind="das",
                site="6.block_output",
                rank=8,
                epochs=200,
                seed=1,
                split_by="base",
                out=tmp_path / "stopped",
            )
    finally:
        timer.cancel()
    run = only_run(tmp_path / "stopped" / "python")
    checkpoints = list((run / "checkpoints").iterdir())
    assert checkpoints, "a checkpoint was written"
