"""Type stubs of ferrovene's native module (the Rust core, built by maturin)."""

from os import PathLike
from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

class Model:
    """A frozen model and its tokenizer, on the CPU."""

    spec: str
    device: str
    n_layers: int
    width: int
    def tokenize(self, text: str) -> list[int]: ...
    def predict(self, text: str, top: int = 5) -> list[dict[str, Any]]: ...
    def sites(self) -> list[str]: ...

class Pairs:
    kind: str
    @staticmethod
    def _from_lines(lines: list[str]) -> "Pairs": ...
    @staticmethod
    def from_jsonl(path: Union[str, PathLike[str]]) -> "Pairs": ...
    def lines(self) -> list[str]: ...
    def __len__(self) -> int: ...

class Intervention:
    """An exported intervention, loaded on the CPU."""

    path: str
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "Intervention": ...
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    def parameters(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def config(self) -> dict[str, Any]: ...

class Report:
    """A finished run: its folder, report.json, losses and intervention."""

    run_dir: str
    report: dict[str, Any]
    metrics: dict[str, Any]
    losses: npt.NDArray[np.float32]
    intervention: Optional[Intervention]

def load_model(spec: str, device: str = "cpu", dtype: str = "f32") -> Model: ...
def run_recipe(
    name_or_path: str,
    *,
    out: str = "runs",
    device: str = "cpu",
    dtype: Optional[str] = None,
    progress: bool = False,
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
    **more: Any,
) -> Report: ...
