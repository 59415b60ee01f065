"""Command line: RecBole's flags (``--model``, ``--dataset``, ``--config_files``, ``--key=value``).

``--model=A,B,C`` runs the models in turn on the same split and prints one table; ``--tune`` and
``--tune_resume`` hand over to :mod:`recbole_letter.tuning` (Ray Tune).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

LOGGER = logging.getLogger("recbole_letter")


# Flags that mean nothing without --tune (a silent no-op would run a plain training instead).
_SEARCH_FLAGS = (
    "params_file", "tune_algo", "tune_samples", "tune_initial_points", "tune_scheduler", "tune_cpus_per_trial",
    "tune_gpus_per_trial", "ray_address", "tune_storage", "tune_max_concurrent",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbole-letter",
        description="Run RecBole models and recbole_letter's LETTER / RQVAE / TIGER under one protocol. "
        "Any other --key=value is a RecBole config override.",
    )
    # model/dataset default to None so a resumed study can tell whether they were given (cli.main fills in).
    parser.add_argument("--model", "-m", default=None, help="model name, or a comma list (SASRec,TIGER); default SASRec")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (folder under data_path); default ml-100k")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files (RecBole style)")
    parser.add_argument("--no-save", dest="saved", action="store_false", help="do not keep checkpoints")
    tune = parser.add_argument_group("tuning (Ray Tune)")
    tune.add_argument("--tune", action="store_true", help="run a hyper-parameter search instead of one run")
    tune.add_argument("--params_file", default=None, help="RecBole .hyper file with the search space")
    tune.add_argument("--tune_algo", choices=["grid", "random", "tpe"], default=None,
                      help="grid: every combination of choice values once (default when all dimensions are choices); "
                      "random: random draws, never the same configuration twice (default otherwise); "
                      "tpe: hyperopt's TPE")
    tune.add_argument("--tune_samples", type=int, default=None,
                      help="number of trials for random/tpe (default 4); a grid runs every combination")
    tune.add_argument("--tune_initial_points", type=int, default=None,
                      help="tpe: random trials before TPE models the scores (default half the trials, at most 20)")
    tune.add_argument("--tune_scheduler", choices=["asha", "fifo"], default=None, help="default asha")
    tune.add_argument("--tune_cpus_per_trial", type=float, default=None, help="default 1")
    tune.add_argument("--tune_gpus_per_trial", type=float, default=None, help="default 0")
    tune.add_argument("--ray_address", default=None, help="'auto' or host:port to join a cluster; default: local Ray")
    tune.add_argument("--tune_storage", default=None, help="directory for Ray results (default saved/ray_results)")
    tune.add_argument("--tune_max_concurrent", type=int, default=None, help="limit on trials running at once")
    tune.add_argument("--tune_resume", default=None, metavar="STUDY_DIR",
                      help="continue an interrupted study: its <checkpoint_dir>/tune/<experiment> folder")
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
    from recbole_letter.quick_start import is_distributed_request, results_table, run_models, run_models_distributed
    from recbole_letter.registry import UnknownModelError, resolve_model

    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = parse_overrides(extra)
    if args.tune_resume:
        # The study keeps its own model, dataset and space; tuning.resume_study rejects changes.
        from recbole_letter.tuning import run_tuning

        given_models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else []
        return run_tuning(args, given_models, None, overrides)
    search_flags = [f"--{name}" for name in _SEARCH_FLAGS if getattr(args, name) is not None]
    if search_flags and not args.tune:
        parser.exit(2, f"error: {', '.join(search_flags)} only apply to a search. Fix: add --tune (or drop them).\n")
    args.model = args.model or "SASRec"
    args.dataset = args.dataset or "ml-100k"
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
        if is_distributed_request(overrides):  # RecBole's nproc/world_size keys, or torchrun
            results, path = run_models_distributed(models, args.dataset, config_files, overrides, saved=args.saved)
        else:
            results, path = run_models(models, args.dataset, config_files, overrides, saved=args.saved)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if path is None:  # a rank other than 0 (or a node without rank 0): rank 0 reports
        return 0
    print(f"\n## {args.dataset}: test results\n")
    print(results_table(results, "test_result"))
    print(f"\n## {args.dataset}: best validation results\n")
    print(results_table(results, "best_valid_result"))
    print(f"\nresults written to {path}")
    return 1 if any("error" in r for r in results) else 0
