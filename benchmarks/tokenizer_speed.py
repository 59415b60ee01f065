"""Tokenizer training speed: items/s of one training epoch, RQVAE vs LETTER, on random data.

9,922 items (the size of the LETTER paper's Instruments catalogue) with 384-d inputs (MiniLM,
the package default encoder ``hidden_dims`` 256-128-64) and 4,096-d inputs (LLaMA-7B, with the
paper's 2048-1024-512-256-128-64 encoder), 64-d CF embeddings, every other setting from
``TokenizerConfig`` (batch 1024, 4 x 256 codes, Sinkhorn on the last level, dead-code restarts;
LETTER adds the CF InfoNCE and the diversity loss with its codebook clustering every 10 epochs).

An epoch is everything ``fit_tokenizer`` does per epoch: diversity clustering when due, the
batches (forward, losses, backward, AdamW step) and the dead-code restart pass. Reported:
median epoch wall and CPU seconds (median: robust to the diversity refresh on the first epoch
and to a busy neighbour on a shared machine) and items/s = n / median epoch seconds; the mean
epoch is in the JSON too. k-means initialisation and final assignment are not part of an epoch.
Prints a markdown table and writes ``benchmarks/results/tokenizer_speed.json``.

    python benchmarks/tokenizer_speed.py                 # ~5 min on one CPU thread
    python benchmarks/tokenizer_speed.py --dims 384 --epochs 10
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common import RESULTS, machine_info, warm_up_tokenizer_fit, write_result

from recbole_letter.tokenization.fit import TokenizerConfig, fit_tokenizer

# Encoder MLP per input size: the package default for MiniLM, the paper's for LLaMA-7B.
HIDDEN = {384: (256, 128, 64), 4096: (2048, 1024, 512, 256, 128, 64)}
METHODS = {"RQVAE": {"alpha": 0.0, "beta": 0.0}, "LETTER": {}}  # LETTER: TokenizerConfig defaults


def hidden_for(dim: int) -> tuple[int, ...]:
    """Halving pyramid from the input down to 64 (the known sizes above, else the same rule)."""
    if dim in HIDDEN:
        return HIDDEN[dim]
    dims, h = [], 1 << (max(dim - 1, 64).bit_length() - 1)
    while h >= 64:
        dims.append(h)
        h //= 2
    return tuple(dims)


def measure(n: int, dim: int, cf_dim: int, method: str, epochs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    cf = rng.standard_normal((n, cf_dim), dtype=np.float32)
    cfg = TokenizerConfig(hidden_dims=hidden_for(dim), epochs=epochs, seed=seed, **METHODS[method])
    result = fit_tokenizer(x, cf if cfg.alpha > 0 else None, cfg, progress=False)
    wall, cpu = np.array(result.epoch_seconds), np.array(result.epoch_cpu_seconds)
    return {
        "items": n,
        "dim": dim,
        "hidden_dims": list(cfg.hidden_dims),
        "method": method,
        "epochs": epochs,
        "batches_per_epoch": int(np.ceil(n / cfg.batch_size)),
        "epoch_seconds": wall.tolist(),
        "epoch_cpu_seconds": cpu.tolist(),
        "median_epoch_seconds": float(np.median(wall)),
        "median_epoch_cpu_seconds": float(np.median(cpu)),
        "items_per_second": n / float(np.median(wall)),
        "items_per_cpu_second": n / float(np.median(cpu)),
        "mean_items_per_second": n * epochs / float(wall.sum()),
        "fit_seconds": result.fit_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=9922, help="catalogue size (Instruments: 9,922)")
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 4096], help="input embedding sizes")
    parser.add_argument("--cf_dim", type=int, default=64, help="CF embedding size (LightGCN default 64)")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 where the CPU is shared)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up_tokenizer_fit()

    rows = []
    for dim in args.dims:
        for method in METHODS:
            row = measure(args.items, dim, args.cf_dim, method, args.epochs, args.seed)
            rows.append(row)
            print(f"{dim}-d {method}: {row['items_per_second']:.0f} items/s wall, "
                  f"{row['items_per_cpu_second']:.0f} items/CPU-s", flush=True)

    header = ("| input | encoder | method | epoch s (wall) | epoch s (CPU) | items/s (wall) | items/s (CPU) |\n"
              "|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['items']} x {r['dim']} | {'-'.join(map(str, r['hidden_dims']))} | {r['method']} | "
        f"{r['median_epoch_seconds']:.2f} | {r['median_epoch_cpu_seconds']:.2f} | "
        f"{r['items_per_second']:.0f} | {r['items_per_cpu_second']:.0f} |"
        for r in rows
    ]
    print(f"\n## Tokenizer training speed ({args.threads} torch thread(s), median of {args.epochs} epochs)\n")
    print("\n".join(lines))
    out = RESULTS / "tokenizer_speed.json"
    payload = {
        "threads": args.threads,
        "rows": rows,
        "machine": machine_info(),
    }
    write_result(out, payload)


if __name__ == "__main__":
    main()
