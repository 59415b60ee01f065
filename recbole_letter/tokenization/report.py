"""Tokenizer quality report: collisions, codebook usage and CF alignment of semantic IDs.

LETTER's claims are about the ID space itself (fewer collisions, balanced code usage, codes that
agree with collaborative signals), so every fitted tokenizer is summarised with flat
``name -> float`` metrics that sit next to Recall/NDCG in a RecBole results table, plus a plot
of code usage per level.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from recbole_letter.atomic import atomic_open
from recbole_letter.tokenization.semantic_ids import _as_code_table, _check_sizes, count_collisions

__all__ = [
    "cf_neighbour_agreement",
    "code_usage_counts",
    "format_report",
    "gini",
    "normalised_entropy",
    "plot_code_usage",
    "tokenizer_report",
]

# Rows per block of the similarity matrix: bounds memory to ~64 MiB of float32 whatever n is.
_BLOCK_ELEMENTS = 1 << 24
# Report keys holding item counts: printed as integers by ``format_report``.
_COUNT_KEYS = frozenset({"collisions_before", "collisions_after", "extra_level_items"})


def code_usage_counts(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[np.ndarray]:
    """Items per code for every level in ``codebook_sizes`` (unused codes counted as 0)."""
    codes = _as_code_table(codes)
    sizes = [int(s) for s in codebook_sizes]
    _check_sizes(codes[:, : len(sizes)], sizes)
    return [np.bincount(codes[:, lvl], minlength=size) for lvl, size in enumerate(sizes)]


def normalised_entropy(counts: np.ndarray) -> float:
    """Shannon entropy of the usage distribution divided by ``log(#codes)``: 1 = perfectly even.

    A one-entry codebook is trivially even (1.0); an empty table has no usage (0.0).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if counts.size <= 1:
        return 1.0 if total > 0 else 0.0
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of items-per-code counts (0 = even, ``(n-1)/n`` = one code takes all).

    ``G = sum_i (2i - n - 1) x_(i) / (n * sum x)`` over counts sorted ascending, ``i`` 1-based.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def cf_neighbour_agreement(
    first_level: np.ndarray, cf_embeddings: np.ndarray, k_neighbours: int = 10
) -> float:
    """Mean share of each item's ``k`` nearest CF neighbours (cosine, self excluded) sharing its
    first-level code.

    Measures whether the coarsest semantic level groups items that users co-consume, which is
    what LETTER's collaborative regulariser is for. Computed on blocks of rows of the cosine
    matrix (one matrix product + one ``topk`` per block), never per item. Ties among
    equally similar neighbours are broken arbitrarily but deterministically.
    """
    first_level = np.asarray(first_level).reshape(-1)
    emb = np.asarray(cf_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != first_level.shape[0]:
        raise ValueError(
            f"cf_embeddings must be [n_items={first_level.shape[0]}, dim] aligned with the code "
            f"table rows, got shape {emb.shape}"
        )
    if not np.isfinite(emb).all():
        raise ValueError("cf_embeddings contain NaN or inf; pass finite embeddings")
    n = emb.shape[0]
    k = min(int(k_neighbours), n - 1)
    if k < 1:
        return float("nan")
    # torch.topk is ~10x faster than np.argpartition for small k on wide rows (measured: 2 s vs
    # 0.2 s for 10k items); torch is a core dependency of the package anyway.
    import torch

    unit = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)  # zero rows stay zero
    codes = torch.from_numpy(first_level.astype(np.int64))
    block = max(1, _BLOCK_ELEMENTS // n)
    agree = 0
    with torch.no_grad():
        for start in range(0, n, block):  # loop over blocks of rows, not items
            stop = min(start + block, n)
            sim = unit[start:stop] @ unit.T
            sim[torch.arange(stop - start), torch.arange(start, stop)] = -torch.inf
            nbrs = torch.topk(sim, k, dim=1, sorted=False).indices
            agree += int((codes[nbrs] == codes[start:stop, None]).sum())
    return agree / (n * k)


def tokenizer_report(
    codes_before: np.ndarray,
    codes_after: np.ndarray,
    cf_embeddings: np.ndarray | None,
    codebook_sizes: list[int],
    k_neighbours: int = 10,
) -> dict[str, float]:
    """Flat quality metrics of a tokenizer's semantic IDs.

    Args:
        codes_before: ``[n, L]`` codes straight from the quantiser (before collision resolution).
        codes_after: ``[n, L]`` or ``[n, L + 1]`` final unique codes (same item order).
        cf_embeddings: optional ``[n, d]`` collaborative item embeddings (same item order).
        codebook_sizes: the ``L`` base codebook sizes.
        k_neighbours: neighbours per item for ``cf_neighbour_agreement``.

    Returns:
        ``collision_rate_before``, ``collisions_before`` (colliding items), ``collisions_after``
        (0 for a valid table), ``utilisation@L<l>`` (share of codebook entries used),
        ``entropy@L<l>`` (normalised entropy of code usage, in [0, 1]), ``gini@L<l>`` (Gini of
        items-per-code, unused codes as 0), ``cf_neighbour_agreement`` (NaN without
        ``cf_embeddings``) and ``extra_level_items`` (items with a nonzero extra code).
        Per-level metrics use the final base levels of ``codes_after``.
    """
    before = _as_code_table(codes_before, "codes_before")
    after = _as_code_table(codes_after, "codes_after")
    n_base = len(codebook_sizes)
    if before.shape != (after.shape[0], n_base) or after.shape[1] not in (n_base, n_base + 1):
        raise ValueError(
            f"codes_before {before.shape} / codes_after {after.shape} do not match "
            f"{n_base} codebook sizes; pass [n, L] before and [n, L] or [n, L+1] after, same items"
        )
    stats_before = count_collisions(before)
    report: dict[str, float] = {
        "collision_rate_before": float(stats_before["collision_rate"]),
        "collisions_before": float(stats_before["colliding_items"]),
        "collisions_after": float(count_collisions(after)["colliding_items"]),
    }
    counts = code_usage_counts(after[:, :n_base], codebook_sizes)
    for lvl, c in enumerate(counts, start=1):
        report[f"utilisation@L{lvl}"] = float((c > 0).mean())
    for lvl, c in enumerate(counts, start=1):
        report[f"entropy@L{lvl}"] = normalised_entropy(c)
    for lvl, c in enumerate(counts, start=1):
        report[f"gini@L{lvl}"] = gini(c)
    report["cf_neighbour_agreement"] = (
        float("nan")
        if cf_embeddings is None
        else cf_neighbour_agreement(after[:, 0], cf_embeddings, k_neighbours)
    )
    extra = after[:, n_base] if after.shape[1] > n_base else np.zeros(0, dtype=np.int64)
    report["extra_level_items"] = float((extra > 0).sum())
    return report


def format_report(report: Mapping[str, float]) -> str:
    """Human-readable text: scalar metrics first, then one row per level (utilisation/entropy/gini)."""
    per_level: dict[int, dict[str, float]] = {}
    scalars: list[tuple[str, float]] = []
    for key, value in report.items():
        name, sep, level = key.partition("@L")
        if sep and level.isdigit():
            per_level.setdefault(int(level), {})[name] = value
        else:
            scalars.append((key, value))

    def fmt(key: str, value: float) -> str:
        value = float(value)
        if math.isnan(value):
            return "n/a"
        return str(int(value)) if key in _COUNT_KEYS and value.is_integer() else f"{value:.4f}"

    width = max((len(k) for k, _ in scalars), default=0)
    lines = ["Tokenizer report"]
    lines += [f"  {key:<{width}}  {fmt(key, value)}" for key, value in scalars]
    if per_level:
        columns = list(dict.fromkeys(c for row in per_level.values() for c in row))
        lines.append("  " + "level".ljust(7) + "".join(c.rjust(13) for c in columns))
        for lvl in sorted(per_level):
            cells = "".join(fmt(c, per_level[lvl].get(c, float("nan"))).rjust(13) for c in columns)
            lines.append("  " + f"L{lvl}".ljust(7) + cells)
    return "\n".join(lines)


def plot_code_usage(
    codes: np.ndarray, codebook_sizes: Sequence[int], path: str | os.PathLike
) -> Path:
    """Write a PNG with one panel per level: items per code, sorted descending.

    A flat curve means balanced usage; a steep head with a long zero tail is codebook collapse.
    An extra disambiguation column (``len(codebook_sizes) + 1``-th) gets its own panel. Uses the
    Agg canvas directly (no pyplot global state) and an atomic temp-file + ``os.replace`` write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    codes = _as_code_table(codes)
    sizes = [int(s) for s in codebook_sizes]
    if codes.shape[1] not in (len(sizes), len(sizes) + 1):
        raise ValueError(
            f"codes have {codes.shape[1]} levels but {len(sizes)} codebook sizes were given; "
            "pass one size per base level"
        )
    counts = code_usage_counts(codes, sizes)
    titles = [f"level {lvl + 1} ({int((c > 0).sum())}/{c.size} used)" for lvl, c in enumerate(counts)]
    if codes.shape[1] > len(sizes):
        extra = np.bincount(codes[:, -1])
        counts.append(extra)
        titles.append(f"extra level ({extra.size} codes)")

    fig = Figure(figsize=(3.6 * len(counts), 3.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(counts), squeeze=False)[0]
    for ax, c, title in zip(axes, counts, titles):
        ranked = np.sort(c)[::-1]
        ax.bar(np.arange(ranked.size), ranked, width=1.0, color="tab:blue", linewidth=0)
        ax.axhline(c.sum() / max(c.size, 1), color="tab:red", linewidth=0.8, label="uniform")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("codes (sorted by usage)")
        ax.set_ylabel("items")
        ax.legend(fontsize=7)

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path
