"""Semantic-ID stage: turn ``item_tokenizer`` from the config into a unique code table.

``item_tokenizer`` is ``LETTER`` (default: RQ-VAE + CF contrastive + diversity), ``RQVAE``
(TIGER's original tokenizer: the same model with alpha = beta = 0) or a path to a LETTER /
LC-Rec ``index.json``. Fitted tokenizers are cached in the stage cache keyed by a hash of their
input matrices and every tokenizer hyper-parameter, so a TIGER run with another learning rate
reuses the tokenizer while a change to ``alpha`` refits it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_letter.config import require
from recbole_letter.data.item_matrix import dataset_item_tokens as item_tokens  # re-exported
from recbole_letter.seeding import isolated_rng
from recbole_letter.stages.stage_cache import stage_cache_for, stage_key
from recbole_letter.tokenization.kmeans import squared_distances
from recbole_letter.tokenization.report import format_report, plot_code_usage, tokenizer_report
from recbole_letter.tokenization.semantic_ids import (
    SemanticIDTable,
    assign_new_items,
    count_collisions,
    export_index_json,
    load_index_json,
    make_unique,
)
from recbole_letter.tokenization.fit import TokenizerConfig, build_model, fit_tokenizer

LOGGER = logging.getLogger("recbole_letter")
STAGE = "tokenizer"
METHODS = ("LETTER", "RQVAE")

# RecBole config key -> TokenizerConfig field. Keys without a ``tokenizer_`` prefix are the
# paper's names (alpha, beta, ...) and are not used by RecBole itself.
CONFIG_KEYS: dict[str, str] = {
    "tokenizer_hidden_dims": "hidden_dims",
    "code_dim": "code_dim",
    "num_levels": "num_levels",
    "codebook_size": "codebook_size",
    "tokenizer_dropout": "dropout",
    "tokenizer_batchnorm": "batchnorm",
    "commitment_beta": "commitment_beta",
    "kmeans_init": "kmeans_init",
    "kmeans_iters": "kmeans_iters",
    "sinkhorn_levels": "sinkhorn_levels",
    "id_sinkhorn_from_level": "id_sinkhorn_from_level",
    "recon_scale": "recon_scale",
    "sinkhorn_epsilon": "sinkhorn_epsilon",
    "sinkhorn_iters": "sinkhorn_iters",
    "alpha": "alpha",
    "beta": "beta",
    "cf_similarity": "cf_similarity",
    "cf_temperature": "cf_temperature",
    "cf_levels": "cf_levels",
    "div_temperature": "div_temperature",
    "n_div_clusters": "n_div_clusters",
    "div_refresh_every": "div_refresh_every",
    "restart_dead_codes_every": "restart_dead_codes_every",
    "tokenizer_learning_rate": "lr",
    "tokenizer_weight_decay": "weight_decay",
    "tokenizer_batch_size": "batch_size",
    "tokenizer_epochs": "epochs",
    "tokenizer_seed": "seed",
}


def tokenizer_config_from(config: Any, method: str) -> TokenizerConfig:
    """A :class:`TokenizerConfig` from RecBole config keys; RQVAE switches the LETTER terms off."""
    values = {fld: require(config, key) for key, fld in CONFIG_KEYS.items()}
    if method == "RQVAE":
        values["alpha"] = 0.0
        values["beta"] = 0.0
    values["device"] = "cuda" if str(config["device"]).startswith("cuda") else "cpu"
    return TokenizerConfig.from_dict(values)


def _array_digest(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    data = np.ascontiguousarray(array)
    return hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()


def normalise_cf_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm CF rows: raw CF embeddings can have norms far above the code space's, which lets
    the dot-product InfoNCE be lowered by shrinking the encoder output and collapses the codes
    (measured: 32-d N(0,1) vectors left 3 first-level codes in use after 5 epochs)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)



@dataclass
class ItemTokenizer:
    """A fitted (or imported) tokenizer: unique codes per item token, plus the model if fitted."""

    tokens: list[str]
    codes: np.ndarray  # [n_items, L'] unique
    raw_codes: np.ndarray  # [n_items, L] before collision resolution
    codebook_sizes: list[int]
    report: dict[str, float] = field(default_factory=dict)
    model: Any = None
    config: TokenizerConfig | None = None
    entry: Path | None = None

    def table_for(self, dataset: Any) -> np.ndarray:
        """Internal-id-aligned table ``[item_num, L']`` with row 0 = -1 (padding)."""
        row = {t: i for i, t in enumerate(self.tokens)}
        wanted = item_tokens(dataset)
        missing = [t for t in wanted if t not in row]
        if missing:
            raise ValueError(
                f"semantic-ID index does not cover {len(missing)} of {len(wanted)} items (e.g. {missing[:5]}). "
                f"Fix: refit the tokenizer on this dataset or give an index.json with every item."
            )
        table = np.full((len(wanted) + 1, self.codes.shape[1]), -1, dtype=np.int64)
        table[1:] = self.codes[[row[t] for t in wanted]]
        return table

    def last_level_distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared distances of each item's last-level residual to every last-level code."""
        if self.model is None:
            raise ValueError("this tokenizer was imported from an index.json; it has no model to encode new items")
        self.model.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
            z = self.model.encode(x)
            residuals = self.model.quantize(z, use_sinkhorn=False)[2]
            return squared_distances(residuals[:, -1], self.model.codebooks[-1]).numpy()

    def tokenize_items(
        self,
        embeddings: np.ndarray,
        tokens: list[str] | None = None,
        extra_level_size: int | None = None,
    ) -> np.ndarray:
        """IDs for items the tokenizer never saw (cold start), unique against all existing items.

        Nearest codes per level (no Sinkhorn: it balances only across the rows it is given), then
        the collision rules of :func:`~.semantic_ids.assign_new_items`: a new item whose tuple is
        taken moves to the nearest free last-level code of its prefix; if the table has an extra
        disambiguation level, a still-colliding item takes the next free extra value. Existing
        items' IDs never change.

        ``extra_level_size`` caps that extra value. The default (``None``) is the size the table
        already has, i.e. what a generator trained on it can emit; anything larger produces IDs
        the trained generator cannot decode, so pass it only when the generator's vocabulary is
        known to be larger (or will be retrained). When ``tokens`` (one per row) is given, the
        new items are appended to this tokenizer, so later calls stay unique against them and
        :meth:`table_for` / exports include them.
        """
        if self.model is None:
            raise ValueError("this tokenizer was imported from an index.json; it has no model to encode new items")
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.model.in_dim:
            raise ValueError(f"new item embeddings must be [n, {self.model.in_dim}], got {emb.shape}")
        if not np.isfinite(emb).all():
            raise ValueError("new item embeddings contain NaN/inf. Fix: clean or re-encode those items.")
        if tokens is not None:
            tokens = [str(t) for t in tokens]
            if len(tokens) != emb.shape[0]:
                raise ValueError(f"{len(tokens)} tokens for {emb.shape[0]} embedding rows; give one token per row")
            repeated = [t for t, c in Counter(tokens).items() if c > 1]
            clash = sorted(set(tokens) & set(self.tokens)) or sorted(repeated)
            if clash:
                raise ValueError(f"item tokens {clash[:5]} already have semantic IDs or repeat; give new, distinct tokens")
        self.model.eval()
        with torch.no_grad():
            new_codes = self.model.get_codes(torch.from_numpy(emb), use_sinkhorn=False).numpy().astype(np.int64)
        assigned = assign_new_items(self.codes, new_codes, self.last_level_distances(emb), extra_level_size)
        if tokens is not None:
            self.tokens = [*self.tokens, *tokens]
            self.codes = np.concatenate([self.codes, assigned], axis=0)
            self.raw_codes = np.concatenate([self.raw_codes, new_codes], axis=0)
        return assigned


def _fit_arrays(
    emb: np.ndarray, cf: np.ndarray | None, cfg: TokenizerConfig, tokens: list[str], out: Path, progress: bool
) -> None:
    result = fit_tokenizer(emb, cf, cfg, progress=progress)
    tok = ItemTokenizer(tokens, result.codes, result.codes, cfg.codebook_sizes, model=result.model, config=cfg)
    unique, info = make_unique(result.codes, tok.last_level_distances(emb), cfg.codebook_sizes)
    np.save(out / "raw_codes.npy", result.codes)
    np.save(out / "codes.npy", unique)
    (out / "tokens.json").write_text(json.dumps(tokens), encoding="utf-8")
    torch.save(result.model.state_dict(), out / "tokenizer.pt")
    (out / "tokenizer_config.json").write_text(json.dumps(asdict(cfg), default=list), encoding="utf-8")
    stats = {
        "in_dim": int(emb.shape[1]),
        "cf_dim": None if cf is None else int(cf.shape[1]),
        "fit_seconds": result.fit_seconds,
        "items_per_second": result.items_per_second,
        "explained_variance": result.explained_variance,
        "resolution": info,
        "history": result.history,
    }
    (out / "fit.json").write_text(json.dumps(stats, default=float), encoding="utf-8")
    export_index_json(unique, tokens, out / "index.json")


def _load_entry(entry: Path) -> ItemTokenizer:
    tokens = json.loads((entry / "tokens.json").read_text(encoding="utf-8"))
    cfg = TokenizerConfig(**json.loads((entry / "tokenizer_config.json").read_text(encoding="utf-8")))
    stats = json.loads((entry / "fit.json").read_text(encoding="utf-8"))
    model = build_model(cfg, stats["in_dim"], stats["cf_dim"])
    model.load_state_dict(torch.load(entry / "tokenizer.pt", map_location="cpu", weights_only=True))
    model.eval()
    return ItemTokenizer(
        tokens, np.load(entry / "codes.npy"), np.load(entry / "raw_codes.npy"), cfg.codebook_sizes,
        model=model, config=cfg, entry=entry,
    )


def _method(config: Any) -> str:
    value = require(config, "item_tokenizer")
    for method in METHODS:
        if str(value).upper() == method:
            return method
    return str(value)


def load_or_fit_tokenizer(config: Any, dataset: Any, method: str | None = None) -> ItemTokenizer:
    """The dataset's tokenizer: imported from an index.json path, or fitted (cached).

    Runs with private random state: rebuilding the cached network draws initial weights before
    loading the saved ones, and a cache miss trains; neither may shift the caller's random
    streams, or the same seed would give other metrics on a cold and a warm cache.
    """
    with isolated_rng():
        return _load_or_fit(config, dataset, method)


def _load_or_fit(config: Any, dataset: Any, method: str | None) -> ItemTokenizer:
    method = method or _method(config)
    tokens = item_tokens(dataset)
    if method not in METHODS:
        path = Path(method)
        if not path.is_file():
            raise FileNotFoundError(
                f"item_tokenizer={method!r} is neither LETTER, RQVAE nor an existing index.json. "
                f"Fix: --item_tokenizer=LETTER or a path to a LETTER/LC-Rec index.json."
            )
        raw, info = load_index_json(path, tokens)
        sizes = [int(s) for s in info["level_sizes"]]
        unique, _ = make_unique(raw, None, sizes)
        if unique.shape[1] > raw.shape[1]:
            LOGGER.warning(
                "%s: %d items shared a semantic ID; an extra disambiguation level makes them unique",
                path, count_collisions(raw)["colliding_items"],
            )
        return ItemTokenizer(tokens, unique, raw, sizes)

    cfg = tokenizer_config_from(config, method)
    from recbole_letter.stages.text_embeddings import item_text_embeddings
    from recbole_letter.stages.cf_embeddings import item_cf_embeddings

    emb = item_text_embeddings(config, dataset)[1:]
    cf = normalise_cf_rows(item_cf_embeddings(config, dataset)[1:]) if cfg.alpha > 0 else None
    params = {
        "method": method,
        "tokenizer": asdict(cfg) | {"device": None},
        "embeddings": _array_digest(emb),
        "cf_embeddings": _array_digest(cf),
        "tokens": hashlib.sha256("\n".join(tokens).encode()).hexdigest(),
    }
    key = stage_key(STAGE, [], params)
    entry = stage_cache_for(config).get_or_compute(
        STAGE, key, lambda out: _fit_arrays(emb, cf, cfg, tokens, out, progress=True)
    )
    return _load_entry(entry)


def report_codebook_sizes(tok: ItemTokenizer, config: Any) -> list[int]:
    """Codes per level K that the report's utilisation and Gini count over.

    A fitted tokenizer knows its codebooks. An imported index only shows the codes it uses, so
    each level counts ``max(codebook_size from the config, largest code + 1)``: the LETTER
    authors' indices use 256 codes per level, and a level that used only 150 of them must be
    reported as 150/256, not 150/150. (The ID table itself keeps the used range as vocabulary.)
    """
    if tok.model is not None or not isinstance(config["codebook_size"], int):
        return list(tok.codebook_sizes)
    return [max(int(size), int(config["codebook_size"])) for size in tok.codebook_sizes]


def build_report(tok: ItemTokenizer, config: Any, dataset: Any) -> dict[str, float]:
    """:func:`~recbole_letter.tokenization.report.tokenizer_report` of the dataset's items.

    CF-neighbour agreement uses the dataset's CF embeddings even for RQVAE and for imported
    indices, so every tokenizer is measured against the same neighbours; ``cf_agreement_lift``
    (agreement over chance) is the number to compare, since raw agreement rises when codes
    collapse (one code for everything scores 1.0) and the lift does not.
    """
    from recbole_letter.stages.cf_embeddings import item_cf_embeddings

    cf = item_cf_embeddings(config, dataset)[1:]
    table = tok.table_for(dataset)[1:]
    row = {t: i for i, t in enumerate(tok.tokens)}
    raw = tok.raw_codes[[row[t] for t in item_tokens(dataset)]]
    report = tokenizer_report(raw, table, cf, report_codebook_sizes(tok, config))
    tok.report = report
    return report


def semantic_ids_for(config: Any, dataset: Any) -> np.ndarray:
    """Return the semantic-ID table for ``dataset``.

    Shape ``[dataset.item_num, n_levels]``, dtype int64, aligned with RecBole internal item ids.
    Row 0 (padding item) is all ``-1``; every other row is a unique tuple of codes, level ``l``
    codes in ``[0, table[:, l].max() + 1)``.
    """
    return load_or_fit_tokenizer(config, dataset).table_for(dataset)


def semantic_id_table_for(config: Any, dataset: Any) -> SemanticIDTable:
    """:func:`semantic_ids_for` as the :class:`SemanticIDTable` a generator receives in
    ``config["semantic_id_table"]`` (level sizes = largest code + 1, what the table uses)."""
    return SemanticIDTable.from_padded(semantic_ids_for(config, dataset))


def tokenizer_source(config: Any, method: str) -> str:
    """What a tokenizer model (``LETTER`` / ``RQVAE``) reports on: its own fit, or -- when
    ``item_tokenizer`` names an index.json -- that index, so ``--model=LETTER
    --item_tokenizer=<index.json>`` prints the published index's report next to ours."""
    if config["item_tokenizer"] is None:  # LETTER.yaml does not set it: the model's own fit
        return method
    value = _method(config)
    return method if value in METHODS else value


def publish(tok: ItemTokenizer, config: Any, method: str) -> dict[str, str]:
    """Copy the index JSON and a code-usage plot next to the checkpoints, where users look.

    ``method`` names the files (``<dataset>.<method>.index.json``); an imported index is
    published as ``imported``."""
    out_dir = Path(config["checkpoint_dir"] or "saved")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{config['dataset']}.{method}"
    index_path = out_dir / f"{stem}.index.json"
    if tok.entry is not None and (tok.entry / "index.json").is_file():
        shutil.copyfile(tok.entry / "index.json", index_path)
    else:
        export_index_json(tok.codes, tok.tokens, index_path)
    sizes = report_codebook_sizes(tok, config)
    plot_path = plot_code_usage(tok.codes[:, : len(sizes)], sizes, out_dir / f"{stem}.code_usage.png")
    LOGGER.info("%s", format_report(tok.report, title=f"Tokenizer report: {method} on {config['dataset']}"))
    return {"index": str(index_path), "plot": str(plot_path)}
