"""Command line: RecBole's flags (``--model``, ``--dataset``, ``--config_files``, ``--key=value``).

``--model=A,B,C`` runs the models in turn on the same split and prints one table; ``--tune`` and
``--tune_resume`` hand over to :mod:`recbole_letter.tuning` (Ray Tune).
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Sequence

LOGGER = logging.getLogger("recbole_letter")


# Flags that mean nothing without --tune (a silent no-op would run a plain training instead).
_SEARCH_FLAGS = (
    "params_file", "tune_algo", "tune_samples", "tune_initial_points", "tune_scheduler", "tune_cpus_per_trial",
    "tune_gpus_per_trial", "tune_workers_per_trial", "ray_address", "tune_storage", "tune_max_concurrent",
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
    parser.add_argument("--debug", action="store_true", help="print full tracebacks with error messages")
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
    tune.add_argument("--tune_workers_per_trial", type=int, default=None,
                      help="> 1: each trial trains data-parallel on that many Ray Train workers (TorchTrainer), "
                      "sharing the trial's CPUs/GPUs; default 1, or the GPU count when --tune_gpus_per_trial > 1")
    tune.add_argument("--ray_address", default=None, help="'auto' or host:port to join a cluster; default: local Ray")
    tune.add_argument("--tune_storage", default=None, help="directory for Ray results (default saved/ray_results)")
    tune.add_argument("--tune_max_concurrent", type=int, default=None, help="limit on trials running at once")
    tune.add_argument("--tune_resume", default=None, metavar="STUDY_DIR",
                      help="continue an interrupted study: its <checkpoint_dir>/tune/<experiment> folder")
    return parser


def parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``--key=value`` pairs RecBole-style; anything else is an error (RecBole only warns).

    List and mapping values (``--item_text_fields=[title]``, RecBole's YAML list syntax) are
    parsed here; other values stay strings for RecBole's own conversion.
    """
    from recbole_letter.validate import InputError, parse_override

    overrides: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise InputError(
                f"unrecognised argument '{arg}'. Fix: config overrides look like --key=value (e.g. --epochs=10)."
            )
        key, value = arg[2:].split("=", 1)
        if not key:
            raise InputError(f"empty key in '{arg}'. Fix: write --key=value.")
        if key in raw and raw[key] != value:
            raise InputError(f"--{key} given twice ({raw[key]!r} and {value!r}). Fix: keep one.")
        raw[key] = value
        overrides[key] = parse_override(key, value)
    return overrides


def _error(message: str, code: int = 2) -> int:
    """One line on stderr, the exit code back to the caller (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run_recbole_letter.py``, ``python -m recbole_letter`` and ``recbole-letter``.

    Exit codes: 0 success, 1 a model failed while running, 2 bad input (found before any stage
    or training runs; one line naming the key/file and the fix), 130 interrupted (Ctrl-C).
    ``--debug`` adds the full traceback to any error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    code = _main(args, extra)
    from recbole_letter.distributed import exit_process, launched_by_torchrun

    if launched_by_torchrun():  # a rank that joined a gloo group can deadlock in interpreter teardown
        exit_process(code)
    return code


def _main(args: argparse.Namespace, extra: Sequence[str]) -> int:
    try:
        return _run(args, extra)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(
            "interrupted (Ctrl-C): stopped. Finished results, checkpoints and cache entries are kept; "
            "nothing half-written is left behind.",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:  # a bug or an environment failure, not bad input
        if args.debug:
            raise
        return _error(f"{type(exc).__name__}: {exc} (run again with --debug for the full traceback)", 1)


def _run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import recbole_letter  # noqa: F401  (applies compat shims before RecBole loads)
    from recbole_letter.quick_start import is_distributed_request, results_table, run_models, run_models_distributed
    from recbole_letter.validate import InputError, validate_command

    config_files = args.config_files.split() if args.config_files else None
    try:
        overrides = parse_overrides(extra)
        if args.tune_resume or args.tune:
            return _tune(args, config_files, overrides)
        search_flags = [f"--{name}" for name in _SEARCH_FLAGS if getattr(args, name) is not None]
        if search_flags:
            raise InputError(f"{', '.join(search_flags)} only apply to a search. Fix: add --tune (or drop them).")
        # None = not given (default SASRec); an empty --model= is an error, not the default
        models = args.model.split(",") if args.model is not None else ["SASRec"]
        args.dataset = args.dataset or "ml-100k"
        validated = validate_command(models, args.dataset, config_files, overrides)
        distributed = is_distributed_request(overrides)
    except (InputError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            traceback.print_exc()
        return _error(str(exc))

    if distributed:  # RecBole's nproc/world_size keys, or torchrun
        names = [spec.name for _, spec in validated]
        results, path = run_models_distributed(names, args.dataset, config_files, overrides, saved=args.saved)
        if path is None:  # a rank other than 0 (or a node without rank 0): rank 0 reports
            return 0
    else:
        results, path = run_models(
            [spec.name for _, spec in validated], args.dataset, config_files, overrides, saved=args.saved,
            debug=args.debug,
        )
    print(f"\n## {args.dataset}: test results\n")
    print(results_table(results, "test_result"))
    print(f"\n## {args.dataset}: best validation results\n")
    print(results_table(results, "best_valid_result"))
    if path is not None and path.is_file():
        print(f"\nresults written to {path}")
    else:
        print("\nno results file written (no model finished)")
    return 1 if any("error" in r for r in results) else 0


def _tune(args: argparse.Namespace, config_files: Sequence[str] | None, overrides: dict[str, Any]) -> int:
    """``--tune`` / ``--tune_resume``: the study is validated before Ray starts (bad input raises
    :class:`~recbole_letter.validate.InputError`); a search that fails later is one line, exit 1."""
    from recbole_letter.tuning import run_tuning

    if args.tune_resume:
        # The study keeps its own model, dataset and space; tuning.resume_study rejects changes.
        given = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else []
        call = (args, given, None, overrides)
    else:
        if args.model is not None and not [m for m in args.model.split(",") if m.strip()]:
            from recbole_letter.validate import InputError

            raise InputError("--model names no model. Fix: e.g. --model=SASRec.")
        args.model = args.model or "SASRec"
        args.dataset = args.dataset or "ml-100k"
        call = (args, [m.strip() for m in args.model.split(",") if m.strip()], config_files, overrides)
    try:
        return run_tuning(*call)
    except SystemExit as exc:  # a failed search: its message is already one line
        if isinstance(exc.code, str):
            return _error(exc.code.removeprefix("error: "), 1)
        raise
