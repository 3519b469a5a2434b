"""ferrovene from Python: train, evaluate and export learned interventions (DAS, Boundless DAS,
ReFT, probes) on frozen models, with ferrovene's Rust core doing the work.

    >>> import ferrovene
    >>> model = ferrovene.load_model("smollm2-135m")
    >>> model.predict("The capital of France is", top=3)
    >>> pairs = ferrovene.Pairs.from_jsonl("datasets/capitals/capitals.jsonl")
    >>> trained = ferrovene.train(model, pairs, kind="das", site="6.block_output", rank=32, seed=3)
    >>> trained.metrics["dev"]["iia"], trained.losses[:5]

Every call runs what the command line runs (`trainer <recipe>`): the same training loop, the same
run folder, the same numbers for the same seed. Errors are `ValueError` (what was given is wrong;
the message names the record, field or argument) or `RuntimeError` (running failed).
Ctrl-C during training stops the run after its step, writes a checkpoint, and raises
`KeyboardInterrupt` naming the run folder.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import _ferrovene
from ._ferrovene import Intervention, Model, Report, __version__

__all__ = [
    "Intervention",
    "Model",
    "Pairs",
    "Report",
    "load_model",
    "run_recipe",
    "train",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]
Progress = Union[bool, Callable[[Optional[str], int, Optional[int], str], Any]]


class _Bars:
    """Shows a run's progress: a tqdm bar per stage (``tqdm.auto``: a widget in notebooks) when
    tqdm is installed, else a line on stderr at each tenth. Called as
    ``(label, position, total, message)``, and with ``label=None`` when the run ends."""

    def __init__(self):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm
        self._bar = None
        self._label = None
        self._tenth = -1

    def __call__(self, label, position, total, message):
        if label != self._label:
            self._close()
            self._label = label
            if label is not None and self._tqdm is not None:
                self._bar = self._tqdm(total=total, desc=label, leave=False)
        if label is None:
            return
        if self._bar is not None:
            self._bar.n = position
            if message:
                self._bar.set_postfix_str(message, refresh=False)
            self._bar.refresh()
        elif total:
            tenth = 10 * position // total
            if tenth != self._tenth:
                self._tenth = tenth
                print(f"{label}: {position}/{total} {message}".rstrip(), file=sys.stderr, flush=True)

    def _close(self):
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._tenth = -1


def _display(progress: Progress):
    """The native call's (terminal bars, callback) for ``progress``."""
    if callable(progress):
        return False, progress
    return False, (_Bars() if progress else None)


def load_model(spec: str, device: str = "cpu", dtype: Optional[str] = None) -> Model:
    """Load a frozen model and its tokenizer, and keep it in memory while the :class:`Model`
    lives: :func:`train`, ``Intervention.apply``, ``.generate`` and ``.evaluate`` given this
    model use it instead of reading the weights again.

    Args:
        spec: a registry name (``"smollm2-135m"``, ``"minilm-l6"``), a Hugging Face folder, a
            ``.gguf`` file, or a hub id ``"org/name[@revision]"``.
        device: where to compute: ``"cpu"``; ``"cuda"``, ``"cuda:N"``, ``"wgpu"`` or
            ``"wgpu:N"`` when the package was built with that feature
            (``MATURIN_PEP517_ARGS="--features cuda" pip install ./bindings/python``).
        dtype: precision of the weights: ``"f32"``, ``"bf16"`` or ``"f16"``; None for the
            device's default (f32 on the CPU, f16 on a GPU that has it). Activations,
            interventions and their training stay f32.

    Returns:
        A :class:`Model` with ``.predict``, ``.tokenize``, ``.activations``, ``.sites()``,
        ``.n_layers``, ``.width``, ``.device`` and ``.dtype``.

    Raises:
        ValueError: a device this build lacks or a dtype it cannot compute in (named), or a
            model that cannot be found or read.
    """
    return _ferrovene.load_model(spec, device=device, dtype=dtype)


class Pairs:
    """Examples in ferrovene's pair format, checked as ``trainer`` checks a pair file.

    One kind per set: counterfactual pairs (``base``, ``sources``, ``positions``, ``label``) for
    DAS, prompts with targets (``prompt``, ``target``) for ReFT, or texts with classes
    (``text``, ``class``) for probes. See ``datasets/README.md`` for every field.
    """

    def __init__(self, native: "_ferrovene.Pairs"):
        self._native = native

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "Pairs":
        """Examples from dicts (one per example, the fields of a pair-file line).

        Raises:
            ValueError: naming the record's index (from 0) and what is wrong with it.
            TypeError: when a record is not a dict.
        """
        lines = []
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise TypeError(f"record {i}: a dict of pair-file fields, not {type(record).__name__}")
            lines.append(json.dumps(dict(record), ensure_ascii=False))
        if not lines:
            raise ValueError("no records: give at least one example")
        return cls(_ferrovene.Pairs._from_lines(lines))

    @classmethod
    def from_jsonl(cls, path: PathLike) -> "Pairs":
        """Examples from a JSONL file (one JSON object per line).

        Raises:
            ValueError: naming the file and line at fault.
        """
        return cls(_ferrovene.Pairs.from_jsonl(os.fspath(path)))

    @property
    def kind(self) -> str:
        """``"pair"``, ``"prompt"`` or ``"text"``."""
        return self._native.kind

    def records(self) -> list:
        """The examples as dicts."""
        return [json.loads(line) for line in self._native.lines()]

    def __len__(self) -> int:
        return len(self._native)

    def __repr__(self) -> str:
        return repr(self._native)


def run_recipe(
    name_or_path: PathLike,
    *,
    out: PathLike = "runs",
    device: str = "cpu",
    dtype: Optional[str] = None,
    progress: Progress = False,
    **overrides: Any,
) -> Report:
    """Run a recipe as ``trainer <recipe>`` does, and return its report.

    Args:
        name_or_path: a recipe name in ``recipes/`` (or ``$FERROVENE_RECIPES``), or a ``.toml``
            file.
        out: where run folders go (``out/NAME/STAMP``).
        device: where to compute (``"cpu"``; ``"cuda[:N]"``, ``"wgpu[:N]"`` in a build with
            that feature).
        dtype: precision of the frozen model (``"f32"``, ``"bf16"``, ``"f16"``); None for the
            device's default.
        progress: show progress: True draws a tqdm bar per stage when tqdm is installed (a
            widget in notebooks), else a line on stderr at each tenth; a callable gets
            ``(label, position, total, message)`` as the run goes, and ``label=None`` at the end.
        **overrides: recipe keys to change, as ``--set key=value`` does (``seed=1``,
            ``epochs=2``, ``site="8.block_output"``); an unknown key raises ``ValueError``
            naming it.

    Returns:
        A :class:`Report`: ``.metrics`` (held-out numbers), ``.losses`` (numpy, one per step),
        ``.run_dir``, ``.report`` (all of report.json) and ``.intervention``.

    Raises:
        KeyboardInterrupt: after Ctrl-C, once the run has written a checkpoint.
    """
    terminal, on_progress = _display(progress)
    return _ferrovene.run_recipe(
        os.fspath(name_or_path),
        out=os.fspath(out),
        device=device,
        dtype=dtype,
        progress=terminal,
        on_progress=on_progress,
        **overrides,
    )


def train(
    model: Model,
    pairs: Pairs,
    *,
    kind: str = "das",
    site: str = "0.block_output",
    rank: Optional[int] = None,
    lr: float = 0.01,
    epochs: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    dev_fraction: Optional[float] = 0.25,
    split_by: Optional[str] = None,
    out: PathLike = "runs",
    name: str = "python",
    dtype: Optional[str] = None,
    progress: Progress = False,
    **more: Any,
) -> Report:
    """Train an intervention on ``pairs`` at ``site`` of ``model``, and evaluate it on held-out
    examples, as a pair-file recipe run by ``trainer`` would.

    Args:
        model: the frozen model (:func:`load_model`); the run uses it (its device and, unless
            ``dtype`` says otherwise, its precision) without loading it again.
        pairs: the examples (:class:`Pairs`); pairs for ``das`` and ``boundless``, prompts for
            ``reft``, texts for ``probe``.
        kind: ``"das"`` (low-rank DAS), ``"boundless"`` (Boundless DAS), ``"reft"`` (ReFT; the
            family with ``family="loreft"`` and kin) or ``"probe"`` (a linear probe).
        site: where to intervene, ``"LAYER.COMPONENT"`` as ``model.sites()`` lists them.
        rank: the subspace's dimension (DAS, ReFT); None where the kind has none.
        lr: peak learning rate (AdamW).
        epochs: passes over the training examples.
        batch_size: examples per optimizer step.
        seed: seeds the split, the initialisation and the batch order: the same seed gives the
            command line's numbers.
        dev_fraction: the share of ``pairs`` held out for evaluation, whole ``split_by``
            groups at a time; ignored when ``held_out=`` gives a file of held-out examples.
        split_by: the metadata field (``meta`` of each example) whose values never straddle
            the split, e.g. ``"base"`` or ``"template"``; needed with ``dev_fraction``.
        out: where the run folder goes (``out/NAME/STAMP``).
        name: the run's name (its folder under ``out``).
        dtype: precision of the frozen model; None for the model's own. Another precision
            than the model's loads a second copy for the run.
        progress: show progress: True draws a tqdm bar per stage when tqdm is installed (a
            widget in notebooks), else a line on stderr at each tenth; a callable gets
            ``(label, position, total, message)`` as the run goes, and ``label=None`` at the end.
        **more: any other key of a pair-file recipe (``dev_fraction=0.25``,
            ``split_by="base"``, ``warmup=0.1``, ``family="loreft"``; see recipes/README.md). An
            unknown key raises ``ValueError`` naming it.

    Returns:
        A :class:`Report` with ``.metrics`` (held-out IIA for DAS, accuracy for probes, …),
        ``.losses`` (numpy, one per step), ``.run_dir`` and ``.intervention``.

    Raises:
        ValueError: a wrong argument or example, named.
        KeyboardInterrupt: after Ctrl-C, once the run has written a checkpoint.
    """
    terminal, on_progress = _display(progress)
    if not isinstance(pairs, Pairs):
        raise TypeError(f"pairs: a ferrovene.Pairs (Pairs.from_records or Pairs.from_jsonl), not {type(pairs).__name__}")
    return _ferrovene.train(
        model,
        pairs._native,
        kind=kind,
        site=site,
        rank=rank,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        dev_fraction=dev_fraction,
        split_by=split_by,
        out=os.fspath(out),
        name=name,
        dtype=dtype,
        progress=terminal,
        on_progress=on_progress,
        **more,
    )
