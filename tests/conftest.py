"""Shared fixtures: one torch thread, a clean ``sys.argv``, a private working directory, tiny data.

RecBole parses ``sys.argv`` for ``--key=value`` and writes ``./log``, ``./log_tensorboard`` and
``./saved`` relative to the working directory, so every test runs with ``argv=['pytest']`` inside
its own ``tmp_path``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401  (applies the compat shims before any test imports RecBole)

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _benchmark_script(stem: str) -> Iterator[ModuleType]:
    """``benchmarks/<stem>.py`` imported as when it runs as a script: Python then puts its own folder
    (with ``benchmarks/common.py``) first on the path, so the tests import it the same way."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location(f"{stem}_benchmark", REPO_ROOT / "benchmarks" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def quality() -> Iterator[ModuleType]:
    """``benchmarks/quality.py`` as a module."""
    yield from _benchmark_script("quality")


@pytest.fixture(scope="module")
def scale() -> Iterator[ModuleType]:
    """``benchmarks/scale.py`` as a module."""
    yield from _benchmark_script("scale")


@pytest.fixture(scope="module")
def cold_start() -> Iterator[ModuleType]:
    """``benchmarks/cold_start.py`` as a module."""
    yield from _benchmark_script("cold_start")


@pytest.fixture(scope="module")
def valid_test_gap() -> Iterator[ModuleType]:
    """``benchmarks/valid_test_gap.py`` as a module."""
    yield from _benchmark_script("valid_test_gap")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Two cores are shared by several processes: more than one thread is slower, not faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """RecBole's Config reads ``--key=value`` from ``sys.argv``: hide pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["pytest"])


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside ``tmp_path`` so RecBole's ./log and ./saved land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_inter(
    root: Path,
    name: str,
    n_users: int = 40,
    n_items: int = 25,
    min_len: int = 8,
    max_len: int = 12,
    seed: int = 0,
    timestamp: bool = True,
    newline: str = "\n",
) -> Path:
    """Write ``<root>/<name>/<name>.inter`` (deterministic) and return the dataset folder.

    Each user gets ``min_len..max_len`` distinct items with increasing timestamps; items are
    drawn from a skewed distribution over ``n_items`` so popular items exist (non-trivial metrics).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    header = INTER_HEADER if timestamp else "user_id:token\titem_id:token"
    lines = [header]
    t = 1_000_000
    for user in range(1, n_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        items = rng.choice(np.arange(1, n_items + 1), size=min(length, n_items), replace=False, p=weights)
        for item in items:
            t += int(rng.integers(1, 100))
            row = [str(user), str(int(item))] + ([f"{float(t)}"] if timestamp else [])
            lines.append("\t".join(row))
    (folder / f"{name}.inter").write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return folder


@pytest.fixture()
def tiny_seq_dataset(workdir: Path) -> Callable[..., Path]:
    """Factory: ``tiny_seq_dataset(name='tiny', **kw)`` -> data root containing ``<name>/<name>.inter``.

    40 users x 8-12 interactions over 25 items by default; keyword arguments go to
    :func:`write_inter`. The test also runs inside ``tmp_path`` (see :func:`workdir`).
    """
    root = workdir / "data"

    def make(name: str = "tiny", **kwargs) -> Path:
        write_inter(root, name, **kwargs)
        return root

    return make


# Small, fast settings that keep RecBole's protocol (LS / TO / full ranking) intact.
FAST_CONFIG = {
    "epochs": 1,
    "train_batch_size": 64,
    "eval_batch_size": 256,
    "hidden_size": 16,
    "embedding_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "show_progress": False,
}


@pytest.fixture()
def fast_config(workdir: Path) -> dict:
    """A fresh copy of :data:`FAST_CONFIG` with checkpoints under the test's own directory."""
    return {**FAST_CONFIG, "checkpoint_dir": str(workdir / "saved")}
