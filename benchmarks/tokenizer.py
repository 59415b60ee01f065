"""Tokenizer quality: TIGER's RQ-VAE vs LETTER, side by side, on a real dataset.

Inputs come from the package's own cached stages, exactly as ``run_recbole_letter.py
--model=RQVAE,LETTER`` gets them: MiniLM text embeddings of the ``.item`` text and LightGCN CF
embeddings trained on the training split (``saved/stages/...``, computed once). Both tokenizers
are then fitted with the same config (``properties/model/LETTER.yaml``; RQVAE = alpha = beta = 0),
seed(s) and epochs, and each gets the same collision resolution and report.

Columns: utilisation / normalised entropy / Gini of code usage per level (after collision
resolution; Gini 0 = even), collisions before and after resolution, CF-neighbour agreement
(share of each item's 10 nearest LightGCN neighbours with the same first-level code) and its
*lift* over chance. Chance is the probability that two random items share a first-level code,
``sum_c n_c (n_c - 1) / (n (n - 1))``: raw agreement rewards collapse (one code for every item
gives 1.0), so a tokenizer only aligns with CF if its lift is above 1 as well. Fit time is wall
and CPU seconds of ``fit_tokenizer`` (k-means init, training, final assignment).

Prints a markdown table (mean, and +- std over seeds when several) and writes
``benchmarks/results/tokenizer_<dataset>.json``.

    python benchmarks/tokenizer.py                                  # ml-1m, 200 epochs
    python benchmarks/tokenizer.py --dataset ml-100k --seeds 2024 2025 2026
    python benchmarks/tokenizer.py --set restart_dead_codes_every=0 --set cf_similarity=dot \\
        --set cf_temperature=1.0 --tag before                      # the pre-fix tokenizer
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import recbole_letter  # noqa: E402,F401  (RecBole shims first)
from recbole.data import create_dataset  # noqa: E402

from recbole_letter.atomic import write_json_atomic  # noqa: E402
from recbole_letter.stages.text_embeddings import item_text_embeddings  # noqa: E402
from recbole_letter.quick_start import build_config  # noqa: E402
from recbole_letter.stages.cf_embeddings import item_cf_embeddings  # noqa: E402
from recbole_letter.tokenization.semantic_ids import make_unique  # noqa: E402
from recbole_letter.stages.item_tokenizer import (  # noqa: E402
    ItemTokenizer,
    item_tokens,
    normalise_cf_rows,
    build_report,
    tokenizer_config_from,
)
from recbole_letter.tokenization.fit import fit_tokenizer  # noqa: E402
from tokenizer_speed import warm_up  # noqa: E402  (sibling script: same warm-up for both benchmarks)

RESULTS = REPO / "benchmarks" / "results"
# RecBole's LightGCN propagates the whole user-item graph for every batch: at its default batch of
# 2048, an ml-1m epoch is 483 propagations = ~185 CPU-s (measured), i.e. hours for a usable number
# of epochs on a shared CPU. 16x larger batches with a 10x learning rate train in ~12 CPU-s/epoch.
CF_CONFIG = "{train_batch_size: 32768, learning_rate: 0.01}"
METHODS = ("RQVAE", "LETTER")


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


def fit_one(config, dataset, method: str, emb: np.ndarray, cf_raw: np.ndarray, epochs: int, seed: int) -> dict:
    """Fit one tokenizer as the tokenizer stage does (same config, CF normalisation, collision
    resolution and report), but uncached and timed."""
    cfg = tokenizer_config_from(config, method)
    cfg.epochs, cfg.seed = epochs, seed
    cf = normalise_cf_rows(cf_raw) if cfg.alpha > 0 else None
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_tokenizer(emb, cf, cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tok = ItemTokenizer(item_tokens(dataset), result.codes, result.codes, cfg.codebook_sizes,
                        model=result.model, config=cfg)
    tok.codes, _ = make_unique(result.codes, tok.last_level_distances(emb), cfg.codebook_sizes)
    report = dict(build_report(tok, config, dataset))
    report["restarted_codes"] = float(sum(result.restarted_codes))
    report["final_recon_loss"] = result.history["recon"][-1] if result.history["recon"] else float("nan")
    report["fit_seconds"] = wall
    report["fit_cpu_seconds"] = cpu
    return report


ROW_ORDER = [
    "utilisation@L{l}", "entropy@L{l}", "gini@L{l}",
]
SCALARS = [
    "collision_rate_before", "collisions_before", "collisions_after", "extra_level_items",
    "cf_neighbour_agreement", "cf_agreement_chance", "cf_agreement_lift",
    "final_recon_loss", "restarted_codes", "fit_seconds", "fit_cpu_seconds",
]


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, reports in runs.items():
        keys = reports[0].keys()
        out[method] = {
            k: {"mean": float(np.mean([r[k] for r in reports])), "std": float(np.std([r[k] for r in reports]))}
            for k in keys
        }
    return out


def markdown(summary: dict[str, dict[str, dict[str, float]]], n_levels: int, n_seeds: int) -> str:
    methods = list(summary)
    keys = [k.format(l=lvl) for lvl in range(1, n_levels + 1) for k in ROW_ORDER] + SCALARS

    def cell(stat: dict[str, float], key: str) -> str:
        mean, std = stat["mean"], stat["std"]
        if key in {"collisions_before", "collisions_after", "extra_level_items", "restarted_codes"}:
            text = f"{mean:.0f}" if n_seeds == 1 else f"{mean:.1f}"
        elif key.startswith("fit_"):
            text = f"{mean:.1f}"
        elif key == "final_recon_loss":
            text = f"{mean:.2e}"
        else:
            text = f"{mean:.4f}"
        return text + (f" ± {std:.4f}" if n_seeds > 1 and not key.startswith("fit_") and "collisions" not in key
                       and key not in {"final_recon_loss", "restarted_codes", "extra_level_items"} else "")

    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key in keys:
        if key not in summary[methods[0]]:
            continue
        lines.append(f"| {key} | " + " | ".join(cell(summary[m][key], key) for m in methods) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The paper's two claims, checked on these numbers."""
    r, t = summary["RQVAE"], summary["LETTER"]
    checks = [
        ("CF-neighbour agreement higher", t["cf_neighbour_agreement"]["mean"] > r["cf_neighbour_agreement"]["mean"]),
        ("CF agreement lift over chance higher", t["cf_agreement_lift"]["mean"] > r["cf_agreement_lift"]["mean"]),
        ("Gini@L1 lower", t["gini@L1"]["mean"] < r["gini@L1"]["mean"]),
    ]
    n_levels = sum(1 for k in t if k.startswith("gini@L"))
    mean_gini = {m: np.mean([summary[m][f"gini@L{l}"]["mean"] for l in range(1, n_levels + 1)]) for m in summary}
    checks.append(("mean Gini over levels lower", mean_gini["LETTER"] < mean_gini["RQVAE"]))
    return [f"- LETTER vs RQVAE: {name}: {'yes' if ok else 'NO'}" for name, ok in checks]


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
    parser.add_argument("--cache_dir", type=Path, default=REPO / "saved", help="stage cache root (checkpoint_dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    overrides = parse_set(args.set)

    cf_config = yaml.safe_load(args.cf_config) or None
    config, dataset, emb, cf = load_inputs(args.dataset, args.cf_epochs, cf_config, overrides, args.cache_dir)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            report = fit_one(config, dataset, method, emb, cf, args.epochs, seed)
            runs[method].append(report)
            print(f"seed {seed} {method}: gini@L1 {report['gini@L1']:.4f}, util@L1 {report['utilisation@L1']:.4f}, "
                  f"collisions before {report['collision_rate_before']:.4f}, CF agreement "
                  f"{report['cf_neighbour_agreement']:.4f} (lift {report['cf_agreement_lift']:.2f}), "
                  f"{report['fit_seconds']:.0f}s", flush=True)

    summary = summarise(runs)
    n_levels = tokenizer_config_from(config, "LETTER").num_levels
    table = markdown(summary, n_levels, len(args.seeds))
    lines = verdict(summary)
    title = (f"## Tokenizer quality on {args.dataset}: {emb.shape[0]} items, MiniLM {emb.shape[1]}-d text, "
             f"LightGCN {cf.shape[1]}-d CF ({args.cf_epochs} epochs, {cf_config}), {args.epochs} tokenizer epochs, "
             f"seeds {args.seeds}" + (f", overrides {overrides}" if overrides else ""))
    print("\n" + title + "\n\n" + table + "\n\n" + "\n".join(lines))

    RESULTS.mkdir(parents=True, exist_ok=True)
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
        "verdict": lines,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
    }
    write_json_atomic(payload, out, default=list, trailing_newline=True)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
