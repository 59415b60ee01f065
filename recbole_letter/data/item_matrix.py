"""Load a user-supplied per-item matrix (text or CF embeddings) and align it with item tokens.

A ``.npy`` file has no notion of item ids, so the row order must be stated or inferable:

1. a sidecar next to it, ``<name>.tokens.txt`` (one item token per line) or
   ``<name>.tokens.json`` (a JSON list of tokens), with ``<name>`` the file name without
   ``.npy`` -- row ``i`` belongs to the ``i``-th token;
2. otherwise, when every item token is a non-negative integer, row ``i`` is item ``i`` (the
   LETTER/LC-Rec convention, e.g. ``Instruments-32d-sasrec.npy``: row 0 is item 0, no padding
   row).  The matrix needs at least ``max token + 1`` rows; extra rows (items RecBole filtered
   out) are ignored with a warning, since they may also mean a misaligned file;
3. otherwise it is an error: the order cannot be guessed safely.

Everything is validated up front (2-D, floating, finite, row count, token coverage) so a bad
file fails in one line instead of producing silently misaligned embeddings.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger("recbole_letter")

_INT_TOKEN = re.compile(r"\d+")


def sidecar_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The two accepted sidecar locations for ``path`` (``.tokens.txt``, ``.tokens.json``)."""
    p = Path(path)
    stem = p.name[: -len(".npy")] if p.name.endswith(".npy") else p.name
    return p.with_name(stem + ".tokens.txt"), p.with_name(stem + ".tokens.json")


def _read_sidecar(path: Path) -> list[str]:
    if path.suffix == ".json":
        try:
            tokens = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}): write a JSON list of item tokens") from None
        if not isinstance(tokens, list):
            raise ValueError(f"{path} must hold a JSON list of item tokens, got {type(tokens).__name__}: fix the file")
        return [str(t) for t in tokens]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_item_matrix(path: str | os.PathLike[str], item_tokens: Sequence[str], what: str) -> np.ndarray:
    """Rows of the ``.npy`` at ``path`` for ``item_tokens``, float32 ``[len(item_tokens), d]``.

    ``what`` names the matrix in error messages (e.g. ``"item_embedding_file"``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found: fix the path in the config")
    try:
        matrix = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{what} {p} is not a plain numeric .npy ({err}): save it with np.save(path, array)") from None
    if matrix.ndim != 2:
        raise ValueError(f"{what} {p} has shape {matrix.shape}, expected 2-D [n_items, dim]: reshape before saving")
    if not np.issubdtype(matrix.dtype, np.floating):
        raise ValueError(f"{what} {p} has dtype {matrix.dtype}, expected floating point: save embeddings as float32")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what} {p} has {int(bad.sum())} rows with NaN/inf (first: row {int(np.flatnonzero(bad)[0])}): "
            "recompute those embeddings"
        )
    tokens = [str(t) for t in item_tokens]
    n_rows = matrix.shape[0]

    txt, js = sidecar_paths(p)
    if txt.is_file() and js.is_file():
        raise ValueError(f"{what} {p} has two sidecars ({txt.name}, {js.name}): keep only one")
    sidecar = txt if txt.is_file() else js if js.is_file() else None
    if sidecar is not None:
        order = _read_sidecar(sidecar)
        if len(order) != n_rows:
            raise ValueError(
                f"{what} {p} has {n_rows} rows but {sidecar.name} lists {len(order)} tokens: "
                "they must describe the same items in the same order"
            )
        if len(set(order)) != len(order):
            raise ValueError(f"{sidecar} lists some item tokens more than once: each row needs a distinct token")
        position = {t: i for i, t in enumerate(order)}
        absent = [t for t in tokens if t not in position]
        if absent:
            raise ValueError(
                f"{what} {p}: {len(absent)} dataset items are not in {sidecar.name} (e.g. {absent[:3]}): "
                "add their rows or filter them out of the dataset"
            )
        rows = np.fromiter((position[t] for t in tokens), dtype=np.int64, count=len(tokens))
    else:
        if not all(_INT_TOKEN.fullmatch(t) for t in tokens):
            example = next(t for t in tokens if not _INT_TOKEN.fullmatch(t))
            raise ValueError(
                f"{what} {p}: item tokens are not integers (e.g. {example!r}), so the row order is unknown: "
                f"add {txt.name} listing one item token per row"
            )
        rows = np.asarray([int(t) for t in tokens], dtype=np.int64)
        needed = int(rows.max()) + 1 if len(rows) else 0
        if n_rows < needed:
            raise ValueError(
                f"{what} {p} has {n_rows} rows, expected at least {needed} (row i = item i, largest item {needed - 1}): "
                f"supply one row per item id, or add {txt.name} listing the token of each row"
            )
        if n_rows > needed:
            logger.warning(
                "%s %s has %d rows but the largest dataset item is %d: rows above it are unused "
                "(fine if RecBole filtered items; otherwise add %s)",
                what, p, n_rows, needed - 1, txt.name,
            )
    return np.ascontiguousarray(matrix[rows], dtype=np.float32)


def pad_item_matrix(rows: np.ndarray) -> np.ndarray:
    """Prepend RecBole's padding item (internal id 0) as a zero row."""
    out = np.zeros((rows.shape[0] + 1, rows.shape[1]), dtype=np.float32)
    out[1:] = rows
    return out


def dataset_item_tokens(dataset: Any) -> list[str]:
    """Tokens of RecBole internal ids 1..item_num-1 (id 0 is padding)."""
    if dataset.item_num < 2:
        raise ValueError("dataset has no items: check the .inter file and filtering options")
    tokens = dataset.id2token(dataset.iid_field, np.arange(1, dataset.item_num))
    return [str(t) for t in np.asarray(tokens).tolist()]
