"""Command line: RecBole's flags (``--model``, ``--dataset``, ``--config_files``, ``--key=value``).

``--model=A,B,C`` runs the models in turn on the same split and prints one table; ``--tune``
hands over to :mod:`recbole_letter.tuning` (Ray Tune).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

LOGGER = logging.getLogger("recbole_letter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-letter",
        description="Run RecBole models and recbole_letter's LETTER / RQVAE / TIGER under one protocol. "
        "Any other --key=value is a RecBole config override.",
    )
    parser.add_argument("--model", "-m", default="SASRec", help="model name, or a comma list (SASRec,TIGER)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (folder under data_path)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files (RecBole style)")
    parser.add_argument("--no-save", dest="saved", action="store_false", help="do not keep checkpoints")
    tune = parser.add_argument_group("tuning (Ray Tune)")
    tune.add_argument("--tune", action="store_true", help="run a hyper-parameter search instead of one run")
    tune.add_argument("--params_file", default=None, help="RecBole .hyper file with the search space")
    tune.add_argument("--tune_samples", type=int, default=4, help="number of trials")
    tune.add_argument("--tune_scheduler", choices=["asha", "fifo"], default="asha")
    tune.add_argument("--tune_cpus_per_trial", type=float, default=1.0)
    tune.add_argument("--tune_gpus_per_trial", type=float, default=0.0)
    tune.add_argument("--ray_address", default=None, help="'auto' or host:port to join a cluster; default: local Ray")
    tune.add_argument("--tune_storage", default=None, help="directory for Ray results (default saved/ray_results)")
    tune.add_argument("--tune_max_concurrent", type=int, default=None, help="limit on trials running at once")
    return parser


def parse_overrides(extra: Sequence[str]) -> dict[str, str]:
    """``--key=value`` pairs RecBole-style; anything else is an error (RecBole only warns)."""
    overrides: dict[str, str] = {}
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"error: unrecognised argument '{arg}'. Config overrides must look like --key=value.")
        key, value = arg[2:].split("=", 1)
        if not key:
            raise SystemExit(f"error: empty key in '{arg}'.")
        if key in overrides and overrides[key] != value:
            raise SystemExit(f"error: --{key} given twice with different values.")
        overrides[key] = value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_recbole_letter.py``, ``python -m recbole_letter`` and ``recbole-letter``."""
    import recbole_letter  # noqa: F401  (applies compat shims before RecBole loads)
    from recbole_letter.quick_start import results_table, run_models
    from recbole_letter.registry import UnknownModelError, resolve_model

    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = parse_overrides(extra)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    config_files = args.config_files.split() if args.config_files else None
    try:
        for name in models:
            resolve_model(name)
    except UnknownModelError as exc:
        parser.exit(2, f"error: {exc}\n")

    if args.tune:
        from recbole_letter.tuning import run_tuning

        return run_tuning(args, models, config_files, overrides)

    try:
        results, path = run_models(models, args.dataset, config_files, overrides, saved=args.saved)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"\n## {args.dataset}: test results\n")
    print(results_table(results, "test_result"))
    print(f"\n## {args.dataset}: best validation results\n")
    print(results_table(results, "best_valid_result"))
    print(f"\nresults written to {path}")
    return 1 if any("error" in r for r in results) else 0
