"""Tokenizer quality: TIGER's RQ-VAE vs LETTER, side by side, on a real dataset.

Inputs come from the package's own cached stages, exactly as ``run_recbole_letter.py
--model=RQVAE,LETTER`` gets them: MiniLM text embeddings of the ``.item`` text and LightGCN CF
embeddings trained on the training split (``saved/stages/...``, computed once). Both tokenizers
are then fitted with the same config (``properties/model/LETTER.yaml``; RQVAE = alpha = beta = 0),
seed(s) and epochs, and each gets the same collision resolution and report.

Rows: per level, codes used, utilisation, entropy (bits and normalised) and Gini of code usage
(after collision resolution; Gini over all codes of the level, unused ones as 0; 0 = even),
collisions before and after resolution, explained variance of the text embeddings by the
decoded IDs, CF-neighbour agreement
(share of each item's 10 nearest LightGCN neighbours with the same first-level code) and its
*lift* over chance. Chance is the probability that two random items share a first-level code,
``sum_c n_c (n_c - 1) / (n (n - 1))``: raw agreement rewards collapse (one code for every item
gives 1.0), so a tokenizer only aligns with CF if its lift is above 1 as well. Fit time is wall
and CPU seconds of ``fit_tokenizer`` (k-means init, training, final assignment).

The LETTER authors' published indices (``--shared_data``: Instruments with their 32-d SASRec
CF embeddings, Yelp without CF) get their own columns from the same report
(:func:`recbole_letter.tokenization.report.index_report`), so ours can be read against theirs.
A checklist at the end tests issue 12's targets (levels 2..L: >= 95% of codes used, on ml-100k
90% of ``min(K, items)``; >= 7.5 bits; Gini <= 0.35; lift >= LETTER's before issue 12;
collisions <= RQVAE's; explained variance within 5 points of RQVAE's).

Prints a markdown table (mean, and +- std over seeds when several) and writes
``benchmarks/results/tokenizer_<dataset>.json``.

    python benchmarks/tokenizer.py                                  # ml-1m, 200 epochs
    python benchmarks/tokenizer.py --dataset ml-100k --seeds 2024 2025 2026
    python benchmarks/tokenizer.py --set restart_dead_codes_every=0 --set cf_similarity=dot \\
        --set cf_temperature=1.0 --tag before                      # the pre-fix tokenizer
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import recbole_letter  # noqa: F401  (RecBole shims first)
from common import RESULTS, machine_info, warm_up_tokenizer_fit, write_result
from recbole.data import create_dataset

from recbole_letter.data.item_matrix import load_item_matrix
from recbole_letter.quick_start import build_config
from recbole_letter.stages.cf_embeddings import item_cf_embeddings
from recbole_letter.stages.item_tokenizer import (
    ItemTokenizer,
    build_report,
    item_tokens,
    normalise_cf_rows,
    tokenizer_config_from,
)
from recbole_letter.stages.text_embeddings import item_text_embeddings
from recbole_letter.tokenization.fit import decode_codes, encode_codes, fit_tokenizer
from recbole_letter.tokenization.report import explained_variance, index_report
from recbole_letter.tokenization.semantic_ids import make_unique

# RecBole's LightGCN propagates the whole user-item graph for every batch: at its default batch of
# 2048, an ml-1m epoch is 483 propagations = ~185 CPU-s (measured), i.e. hours for a usable number
# of epochs on a shared CPU. 16x larger batches with a 10x learning rate train in ~12 CPU-s/epoch.
CF_CONFIG = "{train_batch_size: 32768, learning_rate: 0.01}"
METHODS = ("RQVAE", "LETTER")
RELEASED = " (released IDs)"  # same network, final IDs assigned as the released code does
# LETTER's CF-agreement lift before issue 12 (3-seed means, benchmarks/results/tokenizer_<ds>_pre12.json):
# the fix for deeper-level collapse must not lose CF alignment.
LIFT_BEFORE = {"ml-1m": 51.07, "ml-100k": 27.80}
PUBLISHED = {  # column name -> (index file, CF embeddings file or None), under --shared_data
    "published Instruments": ("Instruments/Instruments.index.json", "Instruments/Instruments-32d-sasrec.npy"),
    "published Yelp": ("Yelp/Yelp.index.json", None),
}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML (``0`` -> int, ``dot`` -> str, ``[1,2]`` -> list)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def load_inputs(dataset: str, cf_epochs: int, cf_config: dict, overrides: dict[str, Any], cache_dir: Path):
    """Config, dataset, text embeddings [n, d] and raw CF embeddings [n, d_cf] (cached stages)."""
    params = {"checkpoint_dir": str(cache_dir), "cf_epochs": cf_epochs, "cf_config": cf_config,
              "show_progress": False, **overrides}
    config, _ = build_config("LETTER", dataset, config_dict=params)
    data = create_dataset(config)
    t0 = time.perf_counter()
    emb = item_text_embeddings(config, data)[1:]
    t1 = time.perf_counter()
    cf = item_cf_embeddings(config, data)[1:]
    t2 = time.perf_counter()
    print(f"{dataset}: {emb.shape[0]} items; text embeddings {emb.shape} ({t1 - t0:.0f}s), "
          f"CF embeddings {cf.shape} ({t2 - t1:.0f}s; cached under {cache_dir}/stages)", flush=True)
    return config, data, emb, cf


def fit_one(config, dataset, method: str, emb: np.ndarray, cf_raw: np.ndarray, epochs: int,
            seed: int) -> dict[str, dict[str, float]]:
    """Fit one tokenizer as the tokenizer stage does (same config, CF normalisation, collision
    resolution and report), but uncached and timed.

    Returns two reports of the *same* fitted network: ``ids`` with the configured final
    assignment (``id_sinkhorn_from_level``) and ``released`` with the released code's (Sinkhorn
    on the training levels only). Training does not depend on the final assignment, so the
    pair is an exact before/after of issue 12's fix on identical inputs, seeds and weights.
    """
    cfg = tokenizer_config_from(config, method)
    cfg.epochs, cfg.seed = epochs, seed
    cf = normalise_cf_rows(cf_raw) if cfg.alpha > 0 else None
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_tokenizer(emb, cf, cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = result.model
    configured = model.id_sinkhorn_levels
    model.id_sinkhorn_levels = model.sinkhorn_levels
    released_codes = encode_codes(model, emb, cfg)
    model.id_sinkhorn_levels = configured
    out = {}
    for name, codes in (("ids", result.codes), ("released", released_codes)):
        tok = ItemTokenizer(item_tokens(dataset), codes, codes, cfg.codebook_sizes, model=model, config=cfg)
        tok.codes, _ = make_unique(codes, tok.last_level_distances(emb), cfg.codebook_sizes)
        report = dict(build_report(tok, config, dataset))
        report["explained_variance"] = explained_variance(emb, decode_codes(model, torch.from_numpy(codes)).numpy())
        report["restarted_codes"] = float(sum(result.restarted_codes))
        report["final_recon_loss"] = result.history["recon"][-1] if result.history["recon"] else float("nan")
        report["fit_seconds"] = wall
        report["fit_cpu_seconds"] = cpu
        out[name] = report
    return out


def published_reports(shared: Path) -> dict[str, dict[str, float]]:
    """Report of each published LETTER index found under ``shared`` (same definitions as ours)."""
    import json

    out: dict[str, dict[str, float]] = {}
    for name, (index_file, cf_file) in PUBLISHED.items():
        index = shared / index_file
        if not index.is_file():
            print(f"{name}: {index} not found, column skipped", flush=True)
            continue
        tokens = list(json.loads(index.read_text(encoding="utf-8")))
        cf = load_item_matrix(shared / cf_file, tokens, "cf_embedding_file") if cf_file else None
        out[name] = index_report(index, None, cf, tokens)
    return out


ROW_ORDER = [
    "used@L{l}", "utilisation@L{l}", "entropy_bits@L{l}", "entropy@L{l}", "gini@L{l}",
]
SCALARS = [
    "n_items", "collision_rate_before", "collisions_before", "collisions_after", "extra_level_items",
    "cf_neighbour_agreement", "cf_agreement_chance", "cf_agreement_lift", "explained_variance",
    "final_recon_loss", "restarted_codes", "fit_seconds", "fit_cpu_seconds",
]
COUNTS = {"n_items", "collisions_before", "collisions_after", "extra_level_items", "restarted_codes"}


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, reports in runs.items():
        keys = reports[0].keys()
        out[method] = {
            k: {"mean": float(np.mean([r[k] for r in reports])), "std": float(np.std([r[k] for r in reports]))}
            for k in keys
        }
    return out


def markdown(summary: dict[str, dict[str, dict[str, float]]], n_levels: int, n_seeds: int,
             published: dict[str, dict[str, float]] | None = None) -> str:
    """One row per metric: our methods (mean +- std over seeds), then the published indices."""
    methods = list(summary)
    published = published or {}
    keys = [k.format(l=lvl) for lvl in range(1, n_levels + 1) for k in ROW_ORDER] + SCALARS

    def text(key: str, mean: float) -> str:
        if np.isnan(mean):
            return "n/a"
        if key in COUNTS or key.startswith("used@"):
            return f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
        if key.startswith("fit_"):
            return f"{mean:.1f}"
        if key == "final_recon_loss":
            return f"{mean:.2e}"
        return f"{mean:.4f}"

    def cell(stat: dict[str, float], key: str) -> str:
        with_std = n_seeds > 1 and not key.startswith("fit_") and key not in COUNTS and key != "final_recon_loss" \
            and not key.startswith("used@")
        return text(key, stat["mean"]) + (f" ± {stat['std']:.4f}" if with_std else "")

    header = methods + list(published)
    lines = ["| metric | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for key in keys:
        if key not in summary[methods[0]]:
            continue
        cells = [cell(summary[m][key], key) for m in methods]
        cells += [text(key, float(rep.get(key, float("nan")))) for rep in published.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, dict[str, dict[str, float]]], dataset: str, n_items: int) -> list[str]:
    """The paper's claims and issue 12's targets, checked on these numbers (means over seeds)."""
    r, t = summary["RQVAE"], summary["LETTER"]
    mean = {m: {k: v["mean"] for k, v in summary[m].items()} for m in summary}
    n_levels = sum(1 for k in t if k.startswith("gini@L"))
    mean_gini = {m: np.mean([mean[m][f"gini@L{l}"] for l in range(1, n_levels + 1)]) for m in METHODS}
    lines = [f"- LETTER vs RQVAE: {name}: {'yes' if ok else 'NO'}" for name, ok in [
        ("CF-neighbour agreement higher", t["cf_neighbour_agreement"]["mean"] > r["cf_neighbour_agreement"]["mean"]),
        ("CF agreement lift over chance higher", t["cf_agreement_lift"]["mean"] > r["cf_agreement_lift"]["mean"]),
        ("Gini@L1 lower", t["gini@L1"]["mean"] < r["gini@L1"]["mean"]),
        ("mean Gini over levels lower", mean_gini["LETTER"] < mean_gini["RQVAE"]),
    ]]
    m = mean["LETTER"]
    for lvl in range(2, n_levels + 1):
        k = m[f"codes@L{lvl}"]
        floor = 0.90 * min(k, n_items) if dataset == "ml-100k" else 0.95 * k  # issue 12's two floors
        lines.append(
            f"- issue 12, LETTER L{lvl}: used {m[f'used@L{lvl}']:.1f} >= {floor:.1f}: "
            f"{'yes' if m[f'used@L{lvl}'] >= floor else 'NO'}; entropy {m[f'entropy_bits@L{lvl}']:.2f} >= 7.5 bits: "
            f"{'yes' if m[f'entropy_bits@L{lvl}'] >= 7.5 else 'NO'}; Gini {m[f'gini@L{lvl}']:.3f} <= 0.35: "
            f"{'yes' if m[f'gini@L{lvl}'] <= 0.35 else 'NO'}"
        )
    released = mean.get("LETTER" + RELEASED)
    if released is not None:
        lines.append(f"- issue 12: LETTER lift {m['cf_agreement_lift']:.2f} >= {released['cf_agreement_lift']:.2f} "
                     f"(same networks, released IDs): {'yes' if m['cf_agreement_lift'] >= released['cf_agreement_lift'] else 'NO'}")
    before = LIFT_BEFORE.get(dataset)
    if before is not None:
        lines.append(f"- issue 12: LETTER lift {m['cf_agreement_lift']:.2f} >= {before:.2f} (LETTER before issue 12, "
                     f"3-seed mean): {'yes' if m['cf_agreement_lift'] >= before else 'NO'}")
    lines.append(f"- issue 12: collisions before resolution {m['collisions_before']:.1f} <= RQVAE's "
                 f"{mean['RQVAE']['collisions_before']:.1f}: "
                 f"{'yes' if m['collisions_before'] <= mean['RQVAE']['collisions_before'] else 'NO'}")
    ev_t, ev_r = m["explained_variance"], mean["RQVAE"]["explained_variance"]
    lines.append(f"- issue 12: explained variance {ev_t:.3f} within 5 points of RQVAE's {ev_r:.3f}: "
                 f"{'yes' if ev_t >= ev_r - 0.05 else 'NO'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m", help="RecBole dataset (bundled: ml-100k, ml-1m)")
    parser.add_argument("--epochs", type=int, default=200, help="tokenizer epochs (same for both)")
    parser.add_argument("--cf_epochs", type=int, default=30, help="LightGCN epochs for the CF embeddings")
    parser.add_argument("--cf_config", default=CF_CONFIG,
                        help="RecBole overrides for LightGCN as YAML (default: large batches, see module doc)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024], help="tokenizer seeds; mean over seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for both tokenizers (e.g. restart_dead_codes_every=0)")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. 'before')")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 where the CPU is shared)")
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--cache_dir", type=Path, default=repo / "saved", help="stage cache root (checkpoint_dir)")
    parser.add_argument("--shared_data", type=Path, default=repo.parent / "shared" / "data",
                        help="folder with the LETTER authors' published indices (Instruments/, Yelp/); missing = no columns")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up_tokenizer_fit()
    overrides = parse_set(args.set)

    cf_config = yaml.safe_load(args.cf_config) or None
    config, dataset, emb, cf = load_inputs(args.dataset, args.cf_epochs, cf_config, overrides, args.cache_dir)
    columns = [f"{m}{suffix}" for suffix in ("", RELEASED) for m in METHODS]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in columns}
    for seed in args.seeds:
        for method in METHODS:
            both = fit_one(config, dataset, method, emb, cf, args.epochs, seed)
            runs[method].append(both["ids"])
            runs[method + RELEASED].append(both["released"])
            report = both["ids"]
            print(f"seed {seed} {method}: gini@L1 {report['gini@L1']:.4f}, util@L1 {report['utilisation@L1']:.4f}, "
                  f"collisions before {report['collision_rate_before']:.4f}, CF agreement "
                  f"{report['cf_neighbour_agreement']:.4f} (lift {report['cf_agreement_lift']:.2f}), "
                  f"{report['fit_seconds']:.0f}s", flush=True)

    summary = summarise(runs)
    n_levels = tokenizer_config_from(config, "LETTER").num_levels
    published = published_reports(args.shared_data)
    table = markdown(summary, n_levels, len(args.seeds), published)
    lines = verdict(summary, args.dataset, int(emb.shape[0]))
    title = (f"## Tokenizer quality on {args.dataset}: {emb.shape[0]} items, MiniLM {emb.shape[1]}-d text, "
             f"LightGCN {cf.shape[1]}-d CF ({args.cf_epochs} epochs, {cf_config}), {args.epochs} tokenizer epochs, "
             f"seeds {args.seeds}" + (f", overrides {overrides}" if overrides else ""))
    print("\n" + title + "\n\n" + table + "\n\n" + "\n".join(lines))

    out = RESULTS / f"tokenizer_{args.dataset}{'_' + args.tag if args.tag else ''}.json"
    payload = {
        "dataset": args.dataset,
        "n_items": int(emb.shape[0]),
        "text_dim": int(emb.shape[1]),
        "cf_dim": int(cf.shape[1]),
        "epochs": args.epochs,
        "cf_epochs": args.cf_epochs,
        "cf_config": cf_config,
        "seeds": args.seeds,
        "overrides": overrides,
        "threads": args.threads,
        "tokenizer_config": {m: vars(tokenizer_config_from(config, m)) | {"epochs": args.epochs} for m in METHODS},
        "summary": summary,
        "runs": runs,
        "published": published,
        "verdict": lines,
        "machine": machine_info(),
    }
    write_result(out, payload, default=list)


if __name__ == "__main__":
    main()
