"""Type stubs of ferrovene's native module (the Rust core, built by maturin)."""

import pathlib
from os import PathLike
from typing import Any, Callable, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

class Model:
    """A frozen model and its tokenizer, on a device, kept in memory while it lives."""

    spec: str
    device: str
    dtype: str
    n_layers: int
    width: int
    def tokenize(self, text: str) -> list[int]: ...
    def predict(self, text: str, top: int = 5) -> list[dict[str, Any]]: ...
    def sites(self) -> list[str]: ...
    def activations(
        self, inputs: list[Union[str, list[int]]], sites: Union[str, list[str]], positions: list[str] = ["last"]
    ) -> Union[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]]: ...

class Pairs:
    kind: str
    @staticmethod
    def _from_lines(lines: list[str]) -> "Pairs": ...
    @staticmethod
    def from_jsonl(path: Union[str, PathLike[str]]) -> "Pairs": ...
    def lines(self) -> list[str]: ...
    def __len__(self) -> int: ...

class Intervention:
    """An exported intervention (parameters on the CPU; applied on the model's device)."""

    path: pathlib.Path
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "Intervention": ...
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    def parameters(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def config(self) -> dict[str, Any]: ...
    def apply(
        self,
        model: Model,
        prompt: str,
        *,
        source: Optional[str] = None,
        positions: Optional[list[str]] = None,
        source_positions: Optional[list[str]] = None,
        top: int = 5,
        chat: bool = False,
        scale: Optional[float] = None,
    ) -> dict[str, Any]: ...
    def generate(
        self,
        model: Model,
        prompt: str,
        *,
        max_tokens: int = 40,
        source: Optional[str] = None,
        positions: Optional[list[str]] = None,
        source_positions: Optional[list[str]] = None,
        every_token: bool = False,
        chat: bool = False,
        scale: Optional[float] = None,
    ) -> dict[str, Any]: ...
    def evaluate(self, model: Model, pairs: Any, *, by: Optional[str] = None, batch_size: int = 32) -> dict[str, Any]: ...
    def to_pyvene(self, dir: Union[str, PathLike[str]], *, force: bool = False) -> None: ...
    def to_pyreft(self, dir: Union[str, PathLike[str]], *, force: bool = False) -> None: ...

class Report:
    """A finished run: its folder, report.json, losses and intervention."""

    run_dir: pathlib.Path
    report: dict[str, Any]
    metrics: dict[str, Any]
    losses: npt.NDArray[np.float32]
    intervention: Optional[Intervention]

def load_model(spec: str, device: str = "cpu", dtype: Optional[str] = None) -> Model: ...
def run_recipe(
    name_or_path: str,
    *,
    out: str = "runs",
    device: str = "cpu",
    dtype: Optional[str] = None,
    progress: bool = False,
    on_progress: Optional[Callable[[Optional[str], int, Optional[int], str], Any]] = None,
    **overrides: Any,
) -> Report: ...
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
    out: str = "runs",
    name: str = "python",
    dtype: Optional[str] = None,
    progress: bool = False,
    on_progress: Optional[Callable[[Optional[str], int, Optional[int], str], Any]] = None,
    **more: Any,
) -> Report: ...
