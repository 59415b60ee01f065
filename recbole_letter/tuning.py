"""``--tune``: hyper-parameter search with Ray Tune, every trial under the plain-run protocol.

A trial is exactly ``run_recbole_letter(model, dataset, config_files, overrides | trial_params)``:
same config cascade, same split, same metrics as a plain run. It reports the best validation score
after every evaluation (RecBole's ``callback_fn``), so ASHA can stop weak trials early, and its
final best-valid and test results at the end. At the end of the study the driver prints all trials
sorted by validation score, writes them as JSON, and writes the best trial's parameters plus the
command-line overrides as a YAML file that ``--config_files`` accepts.

Ray API compatibility. Written against ``tune.Tuner``, present in Ray 2.6.3 (what RecBole 1.2.1
pins) and in current Ray. Three things moved between those versions; :class:`_RayAPI` picks what
the installed Ray has, newest first:

* reporting metrics from a trial: ``ray.tune.report(metrics)`` (current Ray, dict positional), else
  ``ray.train.report(metrics)`` (2.7-2.4x), else ``ray.air.session.report(metrics)`` (2.6). The old
  ``tune.report(**kwargs)`` of 2.6 has a different signature and is never used.
* the trial's id: ``ray.tune.get_context()``, else ``ray.train.get_context()``, else ``ray.air.session``.
* ``RunConfig``/``FailureConfig``: ``ray.tune.*`` (current), else ``ray.train.*`` (2.7+), else
  ``ray.air.*`` (2.6). Current Ray deprecates passing ``ray.train`` configs to a Tuner.

Where files go (``<ckpt>`` = the absolute ``checkpoint_dir``, default ``saved``):

* ``<ckpt>/stages``: the stage cache (text/CF embeddings, fitted tokenizers), shared by all trials.
* ``<ckpt>/tune/<experiment>/trials/<trial>/``: each trial's own ``checkpoint_dir``. RecBole names
  model checkpoints ``<Model>-<time to the second>.pth``, so trials started in the same second
  would overwrite each other's checkpoint and test the wrong model if they shared a directory.
  ``stages`` and ``datasets`` inside it are symlinks to ``<ckpt>/stages`` and ``<ckpt>/datasets``,
  so cached stages are still computed once (the cache's file locks and renames act on the real
  directory). On a multi-node cluster ``<ckpt>`` must be on a shared file system for nodes to
  share the cache; otherwise each node computes its own copy once.
* ``<ckpt>/tune/<experiment>/trials.json`` and ``best_config.yaml``: the summary.
* ``--tune_storage`` (default ``<ckpt>/ray_results``) ``/<experiment>``: Ray's own results.

Ray runs each trial in its own working directory, so every relative path (``data_path``,
``checkpoint_dir``, ``--config_files``, any existing relative file named in the config) is made
absolute on the driver before dispatch.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import inspect
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from recbole_letter.atomic import write_text_atomic
from recbole_letter.hyper import HyperFileError, HyperParam, parse_hyper_file

LOGGER = logging.getLogger("recbole_letter")

METRIC = "best_valid_score"
# Subdirectories of checkpoint_dir that trials share through symlinks (see module docstring).
_SHARED_SUBDIRS = ("stages", "datasets")
# Keys holding paths: always made absolute before dispatch. Other string values are made absolute
# when they name an existing relative path that looks like one (contains a separator or suffix).
_PATH_KEYS = ("data_path", "checkpoint_dir")
# Keys a trial must not tune: they identify the run or are set per trial by this module.
_RESERVED = {"model", "dataset", "data_path", "checkpoint_dir", "gpu_id", "use_gpu", "config_files"}
# Trials end themselves (epochs / early stopping); ASHA's max_t only has to exceed any report count,
# because a trial ASHA stops at max_t would lose its final (test) report.
_ASHA_MAX_T = 1_000_000


class TuningError(ValueError):
    """A tuning request that cannot run as given (the message names the fix)."""


# ------------------------------------------------------------------ Ray version adapter


class _RayAPI:
    """The few Ray entry points whose location changed between Ray 2.6.3 and current Ray."""

    @staticmethod
    def report(metrics: dict[str, Any]) -> None:
        """Report one result from inside a trial (see module docstring for the order tried)."""
        from ray import tune

        params = list(inspect.signature(tune.report).parameters.values())
        if params and params[0].name == "metrics":  # current Ray: tune.report(metrics, *, checkpoint=None)
            tune.report(metrics)
            return
        try:
            from ray import train

            if hasattr(train, "report"):  # Ray 2.7 .. 2.4x
                train.report(metrics)
                return
        except ImportError:  # pragma: no cover - ray.train ships with ray[tune]
            pass
        from ray.air import session  # Ray 2.6

        session.report(metrics)

    @staticmethod
    def trial_id() -> str:
        """Id of the running trial (e.g. ``a1b2c3d4_00001``)."""
        from ray import tune

        if hasattr(tune, "get_context"):
            return str(tune.get_context().get_trial_id())
        from ray import train

        if hasattr(train, "get_context"):
            return str(train.get_context().get_trial_id())
        from ray.air import session

        return str(session.get_trial_id())

    @staticmethod
    def config_classes() -> tuple[type, type]:
        """``(RunConfig, FailureConfig)`` of the installed Ray."""
        from ray import tune

        if hasattr(tune, "RunConfig") and hasattr(tune, "FailureConfig"):
            return tune.RunConfig, tune.FailureConfig
        from ray import train

        if hasattr(train, "RunConfig") and hasattr(train, "FailureConfig"):
            return train.RunConfig, train.FailureConfig
        from ray import air

        return air.RunConfig, air.FailureConfig


def ray_domain(param: HyperParam) -> Any:
    """The Ray Tune sampling domain for one ``.hyper`` dimension (same distribution as hyperopt's)."""
    from ray import tune

    if param.kind == "choice":
        return tune.choice(list(param.choices))
    if param.kind == "uniform":
        return tune.uniform(param.low, param.high)
    if param.kind == "loguniform":  # bounds are natural-log exponents in RecBole/hyperopt
        return tune.loguniform(math.exp(param.low), math.exp(param.high))
    if param.kind == "quniform":
        if param.integer:
            return tune.qrandint(int(param.low), int(param.high), int(param.q))
        return tune.quniform(param.low, param.high, param.q)
    if param.kind == "randint":  # [low, high): Ray and hyperopt both exclude high
        return tune.randint(int(param.low), int(param.high))
    raise ValueError(f"unsupported hyper type {param.kind!r}")  # parse_line already rejects these


# ------------------------------------------------------------------ one trial (runs in a Ray worker)


@dataclass(frozen=True)
class TrialJob:
    """Everything a trial needs besides its sampled params; all paths absolute (Ray changes cwd)."""

    model: str
    dataset: str
    config_files: tuple[str, ...]
    overrides: Mapping[str, Any]
    checkpoint_dir: str
    trials_dir: str
    saved: bool
    cpus_per_trial: float
    gpus_per_trial: float
    valid_metric_bigger: bool = True


def plain(value: Any) -> Any:
    """Python scalars/lists/dicts only: numpy scalars and tuples from samplers break YAML and JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _trial_checkpoint_dir(job: TrialJob, trial: str) -> Path:
    """This trial's own checkpoint_dir, with the shared stage/dataset caches linked in."""
    own = Path(job.trials_dir) / trial
    own.mkdir(parents=True, exist_ok=True)
    for sub in _SHARED_SUBDIRS:
        target = Path(job.checkpoint_dir) / sub
        target.mkdir(parents=True, exist_ok=True)
        link = own / sub
        if not link.is_symlink():
            os.symlink(target, link, target_is_directory=True)
    return own


def trial_params(job: TrialJob, sampled: Mapping[str, Any], checkpoint_dir: Path, gpu_ids: Sequence[Any]) -> dict:
    """Config dict of one trial: command-line overrides < sampled params < per-trial settings."""
    params: dict[str, Any] = dict(job.overrides)
    params.update(plain(dict(sampled)))
    params["checkpoint_dir"] = str(checkpoint_dir)
    # RecBole's Config writes gpu_id into CUDA_VISIBLE_DEVICES: hand it the GPUs Ray assigned
    # ("" = CPU), otherwise every trial would pile onto GPU 0 whatever Ray scheduled.
    params["gpu_id"] = ",".join(str(g) for g in gpu_ids) if job.gpus_per_trial > 0 else ""
    if "torch_num_threads" not in job.overrides:
        params["torch_num_threads"] = max(1, int(job.cpus_per_trial))
    return params


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Ray Tune function trainable: one plain run with ``config`` merged over the overrides."""
    from recbole_letter import compat

    compat.apply()  # normally done already by the worker setup hook (before Ray's own imports); idempotent
    import ray

    from recbole_letter.quick_start import run_recbole_letter

    entered = time.time()
    trial = _RayAPI.trial_id()
    ckpt = _trial_checkpoint_dir(job, trial)
    gpu_ids = ray.get_gpu_ids() if job.gpus_per_trial > 0 else []
    params = trial_params(job, config, ckpt, gpu_ids)
    pick = max if job.valid_metric_bigger else min
    best: list[float] = []  # best valid score so far (RecBole keeps the best checkpoint, so ASHA compares that)

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        score = float(valid_score)
        best.append(score if not best else pick(best[-1], score))
        _RayAPI.report({METRIC: best[-1], "valid_score": score, "epoch": int(epoch_idx) + 1})

    started = time.perf_counter()
    try:
        result = run_recbole_letter(
            job.model, job.dataset, list(job.config_files), params, saved=job.saved, epoch_callback=on_epoch
        )
    except Exception:
        # Ray records the exception and marks the trial ERROR; the study goes on. Log it here too
        # so the trial's own log has the full traceback next to RecBole's output.
        LOGGER.error("trial %s failed:\n%s", trial, traceback.format_exc())
        raise
    run_seconds = time.perf_counter() - started
    _RayAPI.report(
        {
            METRIC: float(result["best_valid_score"]),
            "valid": result["best_valid_result"],
            "test": result["test_result"],
            "epochs": result["epochs"],
            "fit_seconds": result["fit_seconds"],
            "run_seconds": round(run_seconds, 3),
            "entered_at": entered,
            "exited_at": time.time(),
            "checkpoint": result["checkpoint"],
            "finished": True,
        }
    )


# ------------------------------------------------------------------ driver side: preparation


@dataclass
class Study:
    """A prepared search: validated on the driver before Ray starts."""

    model: str
    dataset: str
    space: list[HyperParam]
    job: TrialJob
    valid_metric: str
    bigger: bool
    seed: int
    best_config_overrides: dict[str, Any]
    experiment: str
    experiment_dir: Path
    storage: str
    params_file: str


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or Path(value).suffix != "") and os.path.exists(value)


def absolute_paths(raw_config: Mapping[str, Any]) -> dict[str, str]:
    """Overrides that make every relative path in ``raw_config`` absolute (Ray changes cwd per trial).

    ``raw_config`` is what files and command line gave (RecBole's ``external_config_dict``).
    ``data_path`` defaults to RecBole's ``dataset/`` and ``checkpoint_dir`` to ``saved``.
    """
    fixed: dict[str, str] = {}
    for key in _PATH_KEYS:
        value = raw_config.get(key) or {"data_path": "dataset/", "checkpoint_dir": "saved"}[key]
        fixed[key] = os.path.abspath(str(value))
    for key, value in raw_config.items():
        if key in fixed or not isinstance(value, str) or os.path.isabs(value):
            continue
        if _looks_like_path(value):
            fixed[key] = os.path.abspath(value)
    return fixed


def _documented_keys() -> set[str]:
    """Keys of this package's model YAMLs.

    A model's config does not list every key its stages read: TIGER reads the LETTER tokenizer's
    ``alpha``/``beta`` when they are set. Typos still fail the check in :func:`prepare_study`.
    """
    import yaml

    from recbole_letter.registry import PROPERTIES_DIR

    keys: set[str] = set()
    for file in sorted((PROPERTIES_DIR / "model").glob("*.yaml")):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            keys.update(str(k) for k in data)
    return keys


def _unique_experiment(base: str, roots: Sequence[Path]) -> str:
    name, n = base, 1
    while any((root / name).exists() for root in roots):
        n += 1
        name = f"{base}-{n}"
    return name


def prepare_study(
    args: argparse.Namespace, models: Sequence[str], config_files: Sequence[str] | None, overrides: Mapping[str, str]
) -> Study:
    """Validate the request and build the trial job; no Ray involved, so errors come before start-up."""
    from recbole_letter.quick_start import build_config

    if len(models) != 1:
        raise TuningError(
            f"--tune got {len(models)} models ({', '.join(models)}): tune one model at a time. Fix: pass a single --model."
        )
    if not args.params_file:
        raise TuningError("--tune needs a search space. Fix: add --params_file=properties/hyper/<Model>.hyper.")
    if args.tune_samples < 1:
        raise TuningError(f"--tune_samples={args.tune_samples} must be >= 1. Fix: e.g. --tune_samples=8.")
    if args.tune_cpus_per_trial <= 0 or args.tune_gpus_per_trial < 0:
        raise TuningError("--tune_cpus_per_trial must be > 0 and --tune_gpus_per_trial >= 0. Fix: e.g. 1 and 0.")
    if args.tune_max_concurrent is not None and args.tune_max_concurrent < 1:
        raise TuningError("--tune_max_concurrent must be >= 1. Fix: omit it or give a positive number.")
    space = parse_hyper_file(args.params_file)
    reserved = sorted({p.name for p in space} & _RESERVED)
    if reserved:
        raise TuningError(f"{args.params_file}: {reserved} cannot be tuned (set per run/trial). Fix: remove those lines.")

    files = [os.path.abspath(f) for f in config_files or []]
    model = models[0]
    # Build the config once on the driver: a missing dataset, bad file or unknown key fails now,
    # not N times inside Ray workers.
    config, spec = build_config(model, args.dataset, files, dict(overrides))
    from recbole_letter.validate import validate_config

    validate_config(config, spec, overrides, files)
    known = set(config.final_config_dict) | _documented_keys()
    unknown = [p.name for p in space if p.name not in known]
    if unknown:
        raise TuningError(
            f"{args.params_file}: {unknown} are not config keys of {spec.name} (typo?). "
            f"Fix: use keys from properties/model/{spec.name}.yaml or RecBole's config docs."
        )
    fixed = absolute_paths(config.external_config_dict)
    for key, value in overrides.items():
        if key in {p.name for p in space}:
            LOGGER.warning("--%s=%s is also in %s: each trial uses its sampled value", key, value, args.params_file)
    # RecBole's own str -> value conversion of command-line values (eval, true/false), so the
    # best-config YAML holds typed values that Config reads back identically.
    typed_overrides = {k: plain(v) for k, v in config._convert_config_dict(dict(overrides)).items()}

    checkpoint_dir = Path(fixed["checkpoint_dir"])
    storage = args.tune_storage or str(checkpoint_dir / "ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    roots = [checkpoint_dir / "tune"] + ([Path(storage)] if "://" not in storage else [])
    experiment = _unique_experiment(f"{spec.name}-{args.dataset}-{stamp}", roots)
    experiment_dir = checkpoint_dir / "tune" / experiment
    job_overrides: dict[str, Any] = {**overrides, **fixed}
    job = TrialJob(
        model=spec.name,
        dataset=args.dataset,
        config_files=tuple(files),
        overrides=job_overrides,
        checkpoint_dir=str(checkpoint_dir),
        trials_dir=str(experiment_dir / "trials"),
        saved=bool(getattr(args, "saved", True)),
        cpus_per_trial=float(args.tune_cpus_per_trial),
        gpus_per_trial=float(args.tune_gpus_per_trial),
        valid_metric_bigger=bool(config["valid_metric_bigger"]),
    )
    return Study(
        model=spec.name,
        dataset=args.dataset,
        space=space,
        job=job,
        valid_metric=str(config["valid_metric"]),
        bigger=bool(config["valid_metric_bigger"]),
        seed=int(config["seed"]),
        best_config_overrides=typed_overrides,
        experiment=experiment,
        experiment_dir=experiment_dir,
        storage=storage,
        params_file=str(args.params_file),
    )


# ------------------------------------------------------------------ driver side: Ray session and search


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[float]:
    """Connect to Ray for the study; yields the seconds ``ray.init`` took.

    No address: a local Ray is started here and stopped at the end. ``auto`` or ``host:port``:
    join that cluster (``ray.shutdown`` then only disconnects). A session already initialised in
    this process (tests, notebooks) is reused and left running; it must have been started with
    ``runtime_env={"worker_process_setup_hook": recbole_letter.compat.ray_worker_setup}``, which
    restores the numpy aliases ray 2.6.3's worker-side imports need.
    """
    import ray

    if ray.is_initialized():
        LOGGER.info("tuning: reusing the Ray session of this process")
        yield 0.0
        return
    started = time.perf_counter()
    from recbole_letter.compat import ray_worker_setup

    # The callable, not its "module.function" name: ray 2.6.3 accepts only callables here (current
    # Ray takes both). Ray pickles it by reference, so workers import recbole_letter.compat.
    kwargs: dict[str, Any] = {"runtime_env": {"worker_process_setup_hook": ray_worker_setup}}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise TuningError(
            f"cannot reach a Ray cluster at --ray_address={address}: {exc}. "
            f"Fix: start one with `ray start --head` or drop --ray_address for a local Ray."
        ) from None
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


def _scheduler(kind: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    # Ray's defaults (grace 1 report, keep the top 1/4 at each rung); rungs count validation reports,
    # which are epochs when eval_step is 1 (the default).
    return ASHAScheduler(time_attr="training_iteration", max_t=_ASHA_MAX_T, grace_period=1, reduction_factor=4)


def run_search(study: Study, scheduler: str, samples: int, max_concurrent: int | None) -> tuple[Any, float, float]:
    """Run the Tuner; returns Ray's ResultGrid, the epoch time ``Tuner.fit`` began, and its wall time."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    run_config_cls, failure_config_cls = _RayAPI.config_classes()
    resources = {"cpu": study.job.cpus_per_trial, "gpu": study.job.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=study.job), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={p.name: ray_domain(p) for p in study.space},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max" if study.bigger else "min",
            num_samples=samples,
            scheduler=_scheduler(scheduler),
            # seeded so that the same command samples the same trials
            search_alg=BasicVariantGenerator(random_state=study.seed),
            max_concurrent_trials=max_concurrent,
        ),
        run_config=run_config_cls(
            name=study.experiment,
            storage_path=study.storage,
            failure_config=failure_config_cls(max_failures=0),  # a crashed trial is reported, not retried
            verbose=1,
        ),
    )
    started_at, started = time.time(), time.perf_counter()
    grid = tuner.fit()
    return grid, started_at, time.perf_counter() - started


# ------------------------------------------------------------------ driver side: results


def describe_error(error: Any) -> str | None:
    """One line ``Type: message`` for a failed trial (Ray wraps the original in its own errors)."""
    if error is None:
        return None
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1:  # a traceback rendered as text: its last line is "Type: message"
        return lines[-1][:500]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def collect_rows(grid: Any, space: Sequence[HyperParam], fit_started: float) -> list[dict[str, Any]]:
    """One JSON-able row per trial from Ray's ResultGrid (finished, stopped early, or failed)."""
    names = [p.name for p in space]
    rows: list[dict[str, Any]] = []
    for index in range(len(grid)):
        result = grid[index]
        metrics = dict(result.metrics or {})
        config = plain(dict(result.config or {}))
        path = getattr(result, "path", None) or getattr(result, "log_dir", None)
        error = describe_error(result.error)
        status = "error" if error else ("ok" if metrics.get("finished") else "stopped")
        entered, exited = metrics.get("entered_at"), metrics.get("exited_at")
        rows.append(
            {
                "trial": str(metrics.get("trial_id") or Path(str(path)).name),
                "status": status,
                "params": {n: config.get(n) for n in names},
                METRIC: metrics.get(METRIC),
                "valid": plain(metrics.get("valid")) or None,
                "test": plain(metrics.get("test")) or None,
                "epochs": metrics.get("epochs") or metrics.get("epoch"),
                "fit_seconds": metrics.get("fit_seconds"),
                "run_seconds": metrics.get("run_seconds"),
                "entered_s": round(entered - fit_started, 2) if isinstance(entered, float) else None,
                "exited_s": round(exited - fit_started, 2) if isinstance(exited, float) else None,
                "checkpoint": metrics.get("checkpoint"),
                "error": error,
                "ray_dir": str(path) if path else None,
            }
        )
    return rows


def _score(row: Mapping[str, Any]) -> float | None:
    value = row.get(METRIC)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sort_rows(rows: Sequence[dict[str, Any]], bigger: bool) -> list[dict[str, Any]]:
    """Best validation score first (trials stopped early included); trials without a score last."""
    def key(row: Mapping[str, Any]) -> tuple[int, float]:
        score = _score(row)
        if score is None:
            return (1, 0.0)
        return (0, -score if bigger else score)

    return sorted(rows, key=key)


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """First finished trial of sorted ``rows`` (a stopped trial has no test result to stand on)."""
    return next((r for r in rows if r["status"] == "ok" and _score(r) is not None), None)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


def trials_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], valid_metric: str) -> str:
    """Markdown table of sorted trial rows: params, best valid score, test score of the same metric."""
    failed = any(r.get("error") for r in rows)
    header = ["rank", "trial", "status", *names, f"valid {valid_metric}", f"test {valid_metric}", "epochs"]
    header += ["error"] if failed else []
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    metric_key = valid_metric.lower()
    for rank, row in enumerate(rows, start=1):
        test = (row.get("test") or {}).get(metric_key)
        score = _score(row)
        cells = [str(rank), row["trial"], row["status"]]
        cells += [_cell(row["params"].get(n)) for n in names]
        cells += ["" if score is None else f"{score:.4f}", "" if test is None else f"{float(test):.4f}"]
        cells += [_cell(row.get("epochs"))]
        cells += [_cell(row.get("error"))[:200]] if failed else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_config_yaml(study: Study, row: Mapping[str, Any], n_trials: int, path: Path) -> str:
    """YAML for ``--config_files``: the command-line overrides, then the best trial's tuned keys."""
    import yaml

    values = {**study.best_config_overrides, **plain(dict(row["params"]))}
    test = (row.get("test") or {}).get(study.valid_metric.lower())
    user_files = " ".join(os.path.relpath(f) for f in study.job.config_files)
    header = [
        f"# Best of {n_trials} trials ({study.experiment}): trial {row['trial']}, "
        f"valid {study.valid_metric}={_score(row):.4f}" + (f", test {study.valid_metric}={float(test):.4f}" if test is not None else ""),
        f"# Search space: {study.params_file}. Rerun with:",
        f"#   python run_recbole_letter.py --model={study.model} --dataset={study.dataset} "
        f"--config_files=\"{(user_files + ' ') if user_files else ''}{os.path.relpath(path)}\"",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


def _slots(study: Study, n_trials: int, max_concurrent: int | None) -> int:
    """Trials that could run at once (for the overhead estimate)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    slots = max(1, int(cpus // study.job.cpus_per_trial))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return min(slots, n_trials)


def timing_summary(rows: Sequence[Mapping[str, Any]], wall: float, slots: int, init_seconds: float) -> dict[str, Any]:
    """Ray's cost per trial: slot-seconds not spent inside the trials' own runs, nor idle at the end.

    ``run_seconds`` is timed inside each trial around ``run_recbole_letter`` (data loading, training,
    validation, test); ``entered_s``/``exited_s`` are the trial's entry and exit, in seconds since
    ``Tuner.fit`` started. Of ``wall * slots`` slot-seconds, the trials' runs use ``sum(run)``; once
    the last trials are running, the slots that have no trial left sit idle until the study ends,
    and that time is not Ray's either. What remains, divided by the number of trials, is Ray's
    overhead per trial: starting worker processes and their imports, scheduling, reporting and
    writing results. With one trial per slot at the end, the last ``slots`` exits are the idle
    slots' last trials.
    """
    runs = [float(r["run_seconds"]) for r in rows if isinstance(r.get("run_seconds"), (int, float))]
    summary: dict[str, Any] = {
        "ray_init_seconds": round(init_seconds, 2),
        "tuner_fit_seconds": round(wall, 2),
        "slots": slots,
        "trials": len(rows),
        "finished_trials": len(runs),
        "sum_run_seconds": round(sum(runs), 2),
    }
    entered = [r.get("entered_s") for r in rows]
    exited = [r.get("exited_s") for r in rows]
    if runs and len(runs) == len(rows) and all(isinstance(t, (int, float)) for t in entered + exited):
        idle = sum(max(0.0, wall - t) for t in sorted(exited)[-slots:])
        summary["first_trial_start_seconds"] = round(min(entered), 2)
        summary["idle_slot_seconds_at_end"] = round(idle, 2)
        summary["overhead_per_trial_seconds"] = round((wall * slots - sum(runs) - idle) / len(rows), 2)
    return summary


def run_tuning(
    args: argparse.Namespace, models: Sequence[str], config_files: Sequence[str] | None, overrides: Mapping[str, str]
) -> int:
    """``--tune`` entry point (called by :func:`recbole_letter.cli.main`); 0 if any trial finished."""
    from recbole_letter.quick_start import write_json_atomic

    from recbole_letter.validate import InputError

    try:
        study = prepare_study(args, models, config_files, overrides)
    except InputError:
        raise
    except (HyperFileError, TuningError, FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None  # bad input: the CLI prints one line and exits 2
    print(f"tuning {study.model} on {study.dataset}: {args.tune_samples} trials, {args.tune_scheduler} scheduler, "
          f"experiment {study.experiment}")
    for param in study.space:
        print(f"  {param.name}: {param.describe()}")
    try:
        with ray_session(args.ray_address) as init_seconds:
            grid, fit_started, wall = run_search(study, args.tune_scheduler, args.tune_samples, args.tune_max_concurrent)
            rows = sort_rows(collect_rows(grid, study.space, fit_started), study.bigger)
            slots = _slots(study, len(rows), args.tune_max_concurrent)
            ray_dir = str(getattr(grid, "experiment_path", None) or f"{study.storage}/{study.experiment}")
    except TuningError as exc:
        raise SystemExit(f"error: {exc}") from None

    names = [p.name for p in study.space]
    best = best_row(rows)
    best_path = None
    if best is not None:
        best_path = study.experiment_dir / "best_config.yaml"
        write_text_atomic(best_path, best_config_yaml(study, best, len(rows), best_path))
    timing = timing_summary(rows, wall, slots, init_seconds)
    payload = {
        "model": study.model,
        "dataset": study.dataset,
        "experiment": study.experiment,
        "params_file": study.params_file,
        "space": {p.name: p.describe() for p in study.space},
        "scheduler": args.tune_scheduler,
        "valid_metric": study.valid_metric,
        "valid_metric_bigger": study.bigger,
        "ray_version": _ray_version(),
        "ray_results": ray_dir,
        "best_config": str(best_path) if best_path else None,
        "timing": timing,
        "trials": rows,
    }
    json_path = write_json_atomic(payload, study.experiment_dir / "trials.json")

    print(f"\n## {study.model} on {study.dataset}: {len(rows)} trials, sorted by valid {study.valid_metric}\n")
    print(trials_table(rows, names, study.valid_metric))
    print()
    if best_path is not None:
        print(f"best config: {best_path}  (use with --config_files)")
    else:
        print("no trial finished: no best config written (see the error column)")
    print(f"trial table (JSON): {json_path}")
    print(f"Ray results: {ray_dir}")
    overhead = timing.get("overhead_per_trial_seconds")
    print(
        f"time: Tuner.fit {timing['tuner_fit_seconds']:.1f}s on {slots} slot(s), trials' own runs "
        f"{timing['sum_run_seconds']:.1f}s in total"
        + (f", idle slots at the end {timing['idle_slot_seconds_at_end']:.1f}s, Ray overhead ~{overhead:.1f}s per trial"
           if overhead is not None else "")
    )
    return 0 if best is not None else 1


def _ray_version() -> str:
    import ray

    return str(ray.__version__)
