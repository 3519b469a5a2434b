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


def golden_tensors(path):
    """The float32 tensors of a safetensors file, by name (read with numpy alone)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype=np.float32).reshape(t["shape"])
    return out


def test_activations_are_transformers_hidden_states(model):
    golden = golden_tensors(ROOT / "tests" / "golden" / "smollm2" / "forward.safetensors")
    prompts = json.loads((ROOT / "tests" / "golden" / "smollm2" / "forward.json").read_text())["prompts"]
    # A text and a list of ids: the golden file's first two prompts, five tokens each.
    inputs = [prompts[0]["prompt"], prompts[1]["ids"]]
    acts = model.activations(inputs, ["7.block_output", "15.block_output"], positions=["all"])
    for layer in (7, 15):
        ours = acts[f"{layer}.block_output"]
        assert ours.shape == (2, 5, 576) and ours.dtype == np.float32
        for p in range(2):
            ref = golden[f"p{p}.block_output.{layer}"]
            rel = np.linalg.norm(ours[p] - ref) / np.linalg.norm(ref)
            assert rel < 1e-3, f"prompt {p} layer {layer}: relative error {rel}"
    last = model.activations([prompts[0]["prompt"]], "15.block_output")
    assert last.shape == (1, 1, 576)
    np.testing.assert_array_equal(last[0, 0], acts["15.block_output"][0, 4])
    with pytest.raises(ValueError, match=r"inputs\[1\] gives 2 positions and inputs\[0\] 1"):
        model.activations([[504], [504, 3575]], "3.block_output", positions=["all"])


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

    # The recipe itself through run_recipe, with the command line's overrides as keywords.
    rerun = ferrovene.run_recipe("das-capitals", epochs=1, pairs=str(subset), out=tmp_path / "recipe")
    assert rerun.metrics["dev"] == cli["metrics"]["dev"]
    np.testing.assert_array_equal(rerun.losses, trained.losses)
    with pytest.raises(ValueError, match=r"epoch"):
        ferrovene.run_recipe("das-capitals", epoch=1, out=tmp_path / "recipe")

    # Applying and evaluating it from Python gives `trainer apply` and `trainer eval`'s JSON.
    export = str(trained.run_dir / "intervention.safetensors")
    base, source = "The capital of France is", "The capital of Italy is"
    applied = trained.intervention.apply(model, base, source=source, top=5)
    cli_applied = json.loads(trainer("apply", "--intervention", export, "--prompt", base, "--source", source, "--json"))
    assert [t["id"] for t in applied["after"]] == [t["id"] for t in cli_applied["after"]]
    np.testing.assert_allclose(
        [t["p_after"] for t in applied["after"]], [t["p_after"] for t in cli_applied["after"]], rtol=0, atol=1e-6
    )
    generated = trained.intervention.generate(model, base, source=source, max_tokens=4)
    cli_generated = json.loads(
        trainer("apply", "--intervention", export, "--prompt", base, "--source", source, "--generate", "4", "--json")
    )
    assert (generated["without"], generated["with"]) == (cli_generated["without"], cli_generated["with"])
    evaluated = trained.intervention.evaluate(model, ferrovene.Pairs.from_jsonl(subset))
    cli_evaluated = json.loads(trainer("eval", "--intervention", export, "--pairs", str(subset), "--json"))
    assert evaluated["overall"]["n"] == cli_evaluated["overall"]["n"] == 48
    np.testing.assert_allclose(evaluated["overall"]["iia"], cli_evaluated["overall"]["iia"], rtol=0, atol=1e-6)

    # pyvene's folder, as `trainer export --to pyvene` writes it.
    trained.intervention.to_pyvene(tmp_path / "pyvene")
    trainer("export", export, "--to", "pyvene", str(tmp_path / "pyvene-cli"))
    ours = sorted(p.name for p in (tmp_path / "pyvene").iterdir())
    assert ours == sorted(p.name for p in (tmp_path / "pyvene-cli").iterdir()) and "config.json" in ours
    for name in ours:
        assert (tmp_path / "pyvene" / name).read_bytes() == (tmp_path / "pyvene-cli" / name).read_bytes(), name
    with pytest.raises(ValueError, match=r"not empty"):
        trained.intervention.to_pyvene(tmp_path / "pyvene")

    # The export round-trips through save and load with the same parameters.
    iv = trained.intervention
    params = iv.parameters()
    assert params and all(a.dtype == np.float32 for a in params.values())
    iv.save(tmp_path / "copy.safetensors")
    again = ferrovene.Intervention.load(tmp_path / "copy.safetensors").parameters()
    assert params.keys() == again.keys()
    for name in params:
        np.testing.assert_array_equal(params[name], again[name])


def rerun_on_the_command_line(run_dir, out):
    """The report of `trainer <the run's recipe.toml>` (the recipe a Python call wrote)."""
    trainer(str(run_dir / "recipe.toml"), "--quiet", "--out", str(out))
    return json.loads((only_run(only_run(out)) / "report.json").read_text())


def test_every_pair_kind_from_python_is_the_command_lines_run(model, tmp_path):
    records = [json.loads(line) for line in CAPITALS.read_text().splitlines()[:40]]
    countries = sorted({r["meta"]["base"] for r in records} | {r["meta"]["source"] for r in records})
    prompts = [{"prompt": f"The capital of {r['meta']['base']} is", "target": r["base_label"], "meta": {"c": r["meta"]["base"]}} for r in records[::4]]
    texts = [{"text": f"The capital of {c} is", "class": i % 2, "meta": {"c": c}} for i, c in enumerate(countries * 2)]
    kinds = {
        "boundless": (ferrovene.Pairs.from_records(records), dict(site="6.block_output", lr=0.05, split_by="base")),
        "reft": (ferrovene.Pairs.from_records(prompts), dict(site="6.block_output", rank=2, family="loreft", lr=0.01, split_by="c")),
        "probe": (ferrovene.Pairs.from_records(texts), dict(site="6.block_output", lr=0.05, split_by="c")),
    }
    for kind, (pairs, settings) in kinds.items():
        ours = ferrovene.train(model, pairs, kind=kind, epochs=2, batch_size=4, seed=5, out=tmp_path / kind, **settings)
        cli = rerun_on_the_command_line(ours.run_dir, tmp_path / f"{kind}-cli")
        assert f'kind = "{kind}"' in (ours.run_dir / "recipe.toml").read_text()
        assert ours.metrics == cli["metrics"], kind
        assert ours.metrics["dev"], f"{kind}: held-out metrics"
        np.testing.assert_array_equal(ours.losses, np.asarray(cli["training"]["losses"], dtype=np.float32), err_msg=kind)
        assert len(ours.losses) > 2, kind
        assert set(ours.intervention.parameters()), kind


def test_help_explains_every_argument():
    import inspect

    for fn in (ferrovene.train, ferrovene.run_recipe, ferrovene.load_model):
        doc = inspect.getdoc(fn)
        assert doc and "Args:" in doc, fn.__name__
        args = doc.split("Args:")[1]
        for name, param in inspect.signature(fn).parameters.items():
            shown = f"**{name}" if param.kind is param.VAR_KEYWORD else name
            assert f"    {shown}:" in f"    {args}", f"help({fn.__name__}) does not explain `{name}`"


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
    with pytest.raises(ValueError, match=r"device=\"cuda\": this build of the Python package has no cuda support.*--features cuda"):
        ferrovene.load_model("smollm2-135m", device="cuda")
    with pytest.raises(ValueError, match=r"device=\"gpu\": `gpu` is not a device"):
        ferrovene.load_model("smollm2-135m", device="gpu")
    with pytest.raises(ValueError, match=r"dtype=\"f64\""):
        ferrovene.load_model("smollm2-135m", dtype="f64")


def loads_in(err, spec="smollm2-135m"):
    """How the runs got their model, by the lines `model `spec`…: N parameters` on stderr:
    (kept in memory, read from disk)."""
    lines = [l for l in err.splitlines() if l.startswith(f"model `{spec}`")]
    kept = sum("(kept in memory)" in l for l in lines)
    return kept, len(lines) - kept


def test_a_loaded_model_is_used_without_loading_it_again(model, tmp_path, capfd):
    subset = ferrovene.Pairs.from_jsonl(capitals_subset(tmp_path, n=16))
    capfd.readouterr()
    trained = ferrovene.train(model, subset, site="6.block_output", rank=4, epochs=1, seed=1, split_by="base", out=tmp_path / "a")
    trained.intervention.apply(model, "The capital of France is", source="The capital of Italy is")
    trained.intervention.evaluate(model, subset)
    assert loads_in(capfd.readouterr().err) == (3, 0), "training, apply and evaluate each took the kept model"

    # In bf16: a model of its own, reported as bf16 by the run that uses it.
    half = ferrovene.load_model("smollm2-135m", dtype="bf16")
    assert (half.dtype, half.device, model.dtype) == ("bf16", "cpu", "f32")
    assert loads_in(capfd.readouterr().err) == (0, 1), "bf16 is not the f32 model: read from disk"
    assert half.predict("The capital of France is", top=1)[0]["id"] == model.predict("The capital of France is", top=1)[0]["id"]
    run = ferrovene.train(half, subset, site="6.block_output", rank=4, epochs=1, seed=1, split_by="base", out=tmp_path / "b")
    assert run.report["compute"]["dtype"] == "bf16"
    assert loads_in(capfd.readouterr().err) == (1, 0)
    # Asking a run for another precision than the model's loads that precision.
    f32_run = ferrovene.train(half, subset, site="6.block_output", rank=4, epochs=1, seed=1, split_by="base", dtype="f32", out=tmp_path / "c")
    assert f32_run.report["compute"]["dtype"] == "f32"
    np.testing.assert_array_equal(f32_run.losses, trained.losses)
    assert loads_in(capfd.readouterr().err) == (1, 0), "f32 is the fixture's model, kept"

    # Once the bf16 model is gone, it is read from disk again.
    del half, run
    import gc

    gc.collect()
    ferrovene.load_model("smollm2-135m", dtype="bf16")
    assert loads_in(capfd.readouterr().err) == (0, 1)


def test_progress_reaches_a_callable_and_the_text_fallback(model, tmp_path, capsys, monkeypatch):
    subset = capitals_subset(tmp_path, n=24)
    seen = []
    ferrovene.train(
        model,
        ferrovene.Pairs.from_jsonl(subset),
        site="6.block_output",
        rank=4,
        epochs=12,
        seed=2,
        split_by="base",
        out=tmp_path / "p",
        progress=lambda *update: seen.append(update),
    )
    training = [u for u in seen if u[0] == "training"]
    assert training, f"no training progress among {sorted({u[0] for u in seen if u[0]})}"
    steps = training[0][2]
    assert steps > 0 and all(u[2] == steps and 0 <= u[1] <= steps for u in training)
    assert [u[1] for u in training] == sorted(u[1] for u in training), "positions only go forward"
    assert seen[-1] == (None, 0, None, ""), "the end is announced"
    # Without tqdm, a line per tenth on stderr.
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    ferrovene.train(
        model, ferrovene.Pairs.from_jsonl(subset), site="6.block_output", rank=4, epochs=12, seed=2,
        split_by="base", out=tmp_path / "q", progress=True,
    )
    assert "training: " in capsys.readouterr().err


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
