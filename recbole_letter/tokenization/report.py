"""Tokenizer quality report: collisions, codebook usage and CF alignment of semantic IDs.

LETTER's claims are about the ID space itself (fewer collisions, balanced code usage, codes that
agree with collaborative signals), so every fitted tokenizer is summarised with flat
``name -> float`` metrics that sit next to Recall/NDCG in a RecBole results table, plus a plot
of code usage per level.

The same report can be printed for *any* semantic-ID index, so the LETTER authors' published
indices and ours can be put side by side::

    python -m recbole_letter.tokenization.report ../shared/data/Instruments/Instruments.index.json \
        --cf_embedding_file ../shared/data/Instruments/Instruments-32d-sasrec.npy

Definitions (also printed under every report): per level, *Gini* is computed over **all** ``K``
codes of the level's codebook, a code no item uses counting as 0 items (0 = every code holds
the same number of items, ``(K-1)/K`` = one code holds every item); *entropy* is the Shannon
entropy of the items-per-code distribution in bits (at most ``log2 K``, 8 bits for 256 codes).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recbole_letter.atomic import atomic_open
from recbole_letter.tokenization.semantic_ids import _as_code_table, _check_sizes, count_collisions

__all__ = [
    "DEFINITIONS",
    "cf_neighbour_agreement",
    "chance_agreement",
    "code_usage_counts",
    "entropy_bits",
    "explained_variance",
    "format_report",
    "gini",
    "index_report",
    "normalised_entropy",
    "plot_code_usage",
    "tokenizer_report",
]

# Rows per block of the similarity matrix: bounds memory to ~64 MiB of float32 whatever n is.
_BLOCK_ELEMENTS = 1 << 24
# Report keys holding item counts: printed as integers by ``format_report``.
_COUNT_KEYS = frozenset({"n_items", "collisions_before", "collisions_after", "extra_level_items", "codes", "used"})
# Printed under every report, so nobody has to guess which Gini / entropy the numbers are.
DEFINITIONS = (
    "gini: over ALL codes of the level (codebook size K; unused codes count as 0 items); "
    "0 = even, (K-1)/K = one code takes all.\n"
    "entropy_bits: Shannon entropy of items per code, in bits (max log2 K = 8 for K = 256); "
    "entropy: the same divided by log2 K.\n"
    "Per-level numbers use the base levels of the final IDs; collisions_before counts items sharing a full tuple "
    "before resolution.\n"
    "cf_agreement_lift: share of each item's 10 nearest CF neighbours (cosine) with its first-level code, "
    "divided by the chance that two random items share one."
)


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


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy of the usage distribution in bits (0 for an empty or single-code usage)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


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


def chance_agreement(first_level: np.ndarray) -> float:
    """Probability that two distinct random items share a first-level code:
    ``sum_c n_c (n_c - 1) / (n (n - 1))``. The CF-neighbour agreement a tokenizer gets for free
    from its code-usage skew alone (all items on one code: 1.0)."""
    counts = np.bincount(np.asarray(first_level, dtype=np.int64).reshape(-1)).astype(np.float64)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1))) if n > 1 else float("nan")


def explained_variance(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Share of the total variance of ``x`` ``[n, d]`` that ``x_hat`` reproduces:
    ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (1 = perfect, 0 = no better than the mean).

    Reconstruction MSE alone is not comparable across inputs of different scale (MiniLM rows are
    unit-norm, LLaMA ones are not); the explained share is.
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x {x.shape} and x_hat {x_hat.shape} must be the same [n, d] shape")
    total = float(((x - x.mean(axis=0)) ** 2).sum())
    if total == 0.0:
        return float("nan")
    return 1.0 - float(((x - x_hat) ** 2).sum()) / total


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
        ``n_items``, ``collision_rate_before``, ``collisions_before`` (colliding items),
        ``collisions_after`` (0 for a valid table), per level ``codes@L<l>`` (codebook size K),
        ``used@L<l>`` (codes with >= 1 item), ``utilisation@L<l>`` (their share),
        ``entropy_bits@L<l>`` and ``entropy@L<l>`` (entropy of code usage in bits, and divided
        by ``log2 K``), ``gini@L<l>`` (Gini of items-per-code over all K codes, unused as 0);
        ``cf_neighbour_agreement``, ``cf_agreement_chance`` (:func:`chance_agreement`) and
        ``cf_agreement_lift`` (their ratio; NaN without ``cf_embeddings``) and
        ``extra_level_items`` (items with a nonzero extra code). Per-level metrics use the
        final base levels of ``codes_after``. The lift, not the raw agreement, is the CF claim:
        collapsing every item onto one code scores agreement 1.0 but lift 1.0.
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
        "n_items": float(after.shape[0]),
        "collision_rate_before": float(stats_before["collision_rate"]),
        "collisions_before": float(stats_before["colliding_items"]),
        "collisions_after": float(count_collisions(after)["colliding_items"]),
    }
    counts = code_usage_counts(after[:, :n_base], codebook_sizes)
    for lvl, c in enumerate(counts, start=1):
        report[f"codes@L{lvl}"] = float(c.size)
        report[f"used@L{lvl}"] = float((c > 0).sum())
        report[f"utilisation@L{lvl}"] = float((c > 0).mean())
        report[f"entropy_bits@L{lvl}"] = entropy_bits(c)
        report[f"entropy@L{lvl}"] = normalised_entropy(c)
        report[f"gini@L{lvl}"] = gini(c)
    if cf_embeddings is None:
        agreement = chance = float("nan")
    else:
        agreement = cf_neighbour_agreement(after[:, 0], cf_embeddings, k_neighbours)
        chance = chance_agreement(after[:, 0])
    report["cf_neighbour_agreement"] = agreement
    report["cf_agreement_chance"] = chance
    report["cf_agreement_lift"] = agreement / chance if chance > 0 else float("nan")
    extra = after[:, n_base] if after.shape[1] > n_base else np.zeros(0, dtype=np.int64)
    report["extra_level_items"] = float((extra > 0).sum())
    return report


def format_report(report: Mapping[str, float], title: str = "Tokenizer report", definitions: bool = True) -> str:
    """Human-readable text: scalar metrics first, then one row per level (codes, used,
    utilisation, entropy in bits and normalised, Gini), then the definitions of those numbers."""
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
    lines = [title]
    lines += [f"  {key:<{width}}  {fmt(key, value)}" for key, value in scalars]
    if per_level:
        columns = list(dict.fromkeys(c for row in per_level.values() for c in row))
        lines.append("  " + "level".ljust(7) + "".join(c.rjust(13) for c in columns))
        for lvl in sorted(per_level):
            cells = "".join(fmt(c, per_level[lvl].get(c, float("nan"))).rjust(13) for c in columns)
            lines.append("  " + f"L{lvl}".ljust(7) + cells)
    if definitions:
        lines += ["  " + line for line in DEFINITIONS.splitlines()]
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


# --------------------------------------------------------------------------- any index.json
def default_codebook_size() -> int:
    """``codebook_size`` of ``properties/model/LETTER.yaml``: the K a report assumes per level
    when none is given (the published LETTER indices use the same 256)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "properties" / "model" / "LETTER.yaml"
    value = yaml.safe_load(path.read_text(encoding="utf-8"))["codebook_size"]
    if not isinstance(value, int):
        raise ValueError(f"{path}: codebook_size must be one int for the report default, got {value!r}")
    return value


def index_report(
    path: str | os.PathLike,
    codebook_sizes: Sequence[int] | None = None,
    cf_embeddings: np.ndarray | None = None,
    item_tokens: Sequence[str] | None = None,
    k_neighbours: int = 10,
) -> dict[str, float]:
    """:func:`tokenizer_report` of a LETTER / LC-Rec ``index.json`` (``{"item": ["<a_1>", ...]}``).

    ``item_tokens`` restricts (and orders) the items; default: every item of the index, in file
    order. Published indices are not collision-free, so their codes are the "before" table and
    the "after" table is the same codes plus the extra disambiguation level the semantic-ID
    stage would add. ``codebook_sizes`` (one, or one per level) is the K that utilisation and
    Gini count over; a code >= K is an error. ``None`` counts, per level,
    ``max(LETTER.yaml's codebook_size, largest code + 1)`` -- the same K the
    ``--model=LETTER --item_tokenizer=<index.json>`` run reports. ``cf_embeddings`` are rows
    aligned with the items (see :func:`~recbole_letter.data.item_matrix.load_item_matrix`).
    """
    import json

    from recbole_letter.tokenization.semantic_ids import load_index_json, make_unique

    if item_tokens is None:
        try:
            item_tokens = list(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError):
            item_tokens = []  # let load_index_json raise its precise error
    codes, _ = load_index_json(path, list(item_tokens))
    top = codes.max(axis=0) + 1
    if codebook_sizes is None:
        sizes = np.maximum(top, default_codebook_size()).tolist()
    else:
        sizes = [int(s) for s in codebook_sizes]
        if len(sizes) == 1:
            sizes = sizes * codes.shape[1]
        if len(sizes) != codes.shape[1]:
            raise ValueError(
                f"{path} has {codes.shape[1]} levels but {len(sizes)} codebook sizes were given; give one or one per level"
            )
        if (top > np.asarray(sizes)).any():
            lvl = int(np.flatnonzero(top > np.asarray(sizes))[0])
            raise ValueError(
                f"{path}: level {lvl + 1} uses code {int(top[lvl]) - 1} but the codebook size given is {sizes[lvl]}; "
                f"pass --codebook_size {int(top.max())} (or one size per level)"
            )
    unique, _ = make_unique(codes, None, sizes)
    return tokenizer_report(codes, unique, cf_embeddings, sizes, k_neighbours)


def _dataset_report(args: argparse.Namespace) -> dict[str, float]:
    """The report a ``--model=LETTER --item_tokenizer=<index>`` run prints: the dataset's items
    only, CF agreement against the dataset's (cached) CF embeddings.

    The one place this module reaches the stages (same layer): imported here, so the library
    functions above stay free of RecBole.
    """
    from recbole.data import create_dataset
    from recbole.model.general_recommender import Pop

    from recbole_letter.config import build_config, model_config_files

    params: dict[str, Any] = {"item_tokenizer": str(args.index)}
    if args.data_path:
        params["data_path"] = args.data_path
    if args.codebook_size:
        if len(args.codebook_size) != 1:
            raise SystemExit("--codebook_size with --dataset takes one value (LETTER.yaml's codebook_size)")
        params["codebook_size"] = args.codebook_size[0]
    files = args.config_files.split() if args.config_files else None
    # The stages read only config keys: LETTER.yaml's on top of the protocol. RecBole's Config
    # wants a model class, and the LETTER class sits above this layer, so Pop (the same
    # general-recommender type, no keys of its own that the stages read) carries the config.
    config = build_config(Pop, args.dataset, config_files=files, config_dict=params,
                          model_files=model_config_files(Pop, "LETTER"))
    from recbole_letter.stages.item_tokenizer import build_report, load_or_fit_tokenizer

    dataset = create_dataset(config)
    return build_report(load_or_fit_tokenizer(config, dataset, str(args.index)), config, dataset)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``python -m recbole_letter.tokenization.report <index.json> [...]``: print the report."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_letter.tokenization.report",
        description="Quality report (collisions, per-level usage / entropy / Gini, CF agreement) of a "
        "LETTER / LC-Rec semantic-ID index.json.",
        epilog=DEFINITIONS,
    )
    parser.add_argument("index", type=Path, help='semantic-ID file {"item": ["<a_1>", "<b_7>", ...]}')
    parser.add_argument("--codebook_size", type=int, nargs="+", default=None,
                        help="codes per level K (one value, or one per level); default: LETTER.yaml's codebook_size")
    parser.add_argument("--cf_embedding_file", type=Path, default=None,
                        help="CF item embeddings .npy for the CF-agreement rows (row i = item i, or a .tokens.txt sidecar)")
    parser.add_argument("--dataset", default=None,
                        help="RecBole dataset: report only its items, with CF embeddings from its CF stage "
                        "(cached; what --model=LETTER --item_tokenizer=<index.json> reports)")
    parser.add_argument("--config_files", default=None, help="with --dataset: RecBole config files, space separated")
    parser.add_argument("--data_path", default=None, help="with --dataset: where <dataset>/<dataset>.inter lives")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    if args.dataset is not None:
        report = _dataset_report(args)
    else:
        cf = None
        tokens = None
        if args.cf_embedding_file is not None:
            import json

            from recbole_letter.data.item_matrix import load_item_matrix

            tokens = list(json.loads(args.index.read_text(encoding="utf-8")))
            cf = load_item_matrix(args.cf_embedding_file, tokens, "cf_embedding_file")
        report = index_report(args.index, args.codebook_size, cf, tokens)
    print(format_report(report, title=f"Tokenizer report: {args.index}" + (f" on {args.dataset}" if args.dataset else "")))
    if args.json is not None:
        from recbole_letter.atomic import write_json_atomic

        write_json_atomic({"index": str(args.index), "dataset": args.dataset, "report": report}, args.json)
    return report


if __name__ == "__main__":  # pragma: no cover - exercised through main() in tests
    main()
