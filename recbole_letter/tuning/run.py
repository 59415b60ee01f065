"""``--tune`` / ``--tune_resume``: connect to Ray, run or restore the study, write what it found."""
from __future__ import annotations

import argparse
import contextlib
import logging
import time
from typing import Any, Iterator, Mapping, Sequence

from recbole_letter.atomic import write_json_atomic, write_text_atomic
from recbole_letter.hyper import HyperFileError
from recbole_letter.tuning import ray_api, report, search
from recbole_letter.tuning.ray_api import TuningError
from recbole_letter.tuning.study import Study, prepare_study, resume_study, save_study
from recbole_letter.tuning.trial import METRIC, DataParallelTrial, run_trial

LOGGER = logging.getLogger("recbole_letter")

# Trials end themselves (epochs / early stopping); ASHA's max_t only has to exceed any report count,
# because a trial ASHA stops at max_t would lose its final (test) report.
_ASHA_MAX_T = 1_000_000


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


def run_search(study: Study, resume: bool, callbacks: Sequence[Any] = ()) -> tuple[Any, float, float]:
    """Run a new Tuner, or restore Ray's saved one; returns the ResultGrid, start time and wall time.

    A restored Tuner keeps the finished and crashed trials as they were, reruns the unfinished
    ones from the start (trials keep no checkpoints), and lets the saved search algorithm create
    the trials it had not created yet: the grid/random list continues where it stopped.
    """
    from ray import tune

    data_parallel = study.job.workers_per_trial > 1
    if data_parallel:
        trainable = data_parallel_trainer(study.job)
    else:
        resources = {"cpu": study.job.cpus_per_trial, "gpu": study.job.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(run_trial, job=study.job), resources)
    if resume:
        if not ray_api.can_restore(study.ray_dir):
            raise TuningError(
                f"--tune_resume: Ray saved no experiment state in {study.ray_dir}, so there is nothing to continue. "
                f"Fix: start the study again with --tune."
            )
        tuner = tune.Tuner.restore(
            study.ray_dir, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    else:
        run_config_cls, failure_config_cls = ray_api.config_classes()
        search_alg, param_space, max_concurrent_trials = search.search_algorithm(
            study.algorithm, study.space, study.planned, study.n_trials, study.seed, study.initial_points,
            study.max_concurrent, nest_under=TRAIN_LOOP_CONFIG if data_parallel else None,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max" if study.bigger else "min",
                num_samples=study.n_trials,
                scheduler=_scheduler(study.scheduler),
                search_alg=search_alg,
                max_concurrent_trials=max_concurrent_trials,
            ),
            run_config=run_config_cls(
                name=study.experiment,
                storage_path=study.storage,
                failure_config=failure_config_cls(max_failures=0),  # a crashed trial is reported, not retried
                callbacks=list(callbacks) or None,
                verbose=1,
            ),
        )
    started_at, started = time.time(), time.perf_counter()
    grid = tuner.fit()
    return grid, started_at, time.perf_counter() - started


TRAIN_LOOP_CONFIG = "train_loop_config"  # where a Ray Trainer in a Tuner takes the sampled values


def data_parallel_trainer(job: Any) -> Any:
    """A Ray Train ``TorchTrainer`` running one trial on ``job.workers_per_trial`` workers.

    The trial's CPUs and GPUs are split evenly over its workers (``--tune_gpus_per_trial=4`` ->
    4 workers with one GPU each); the trainer actor itself takes no resources. Workers form a
    gloo (CPU) or NCCL (GPU) group whose collectives time out after ``ddp_timeout`` seconds.
    """
    torch_trainer, scaling_config, torch_config = ray_api.torch_trainer_classes()
    workers = job.workers_per_trial
    per_worker = {"CPU": job.cpus_per_trial / workers}
    if job.gpus_per_trial > 0:
        per_worker["GPU"] = job.gpus_per_trial / workers
    timeout = int(float(job.overrides.get("ddp_timeout") or 1800))
    return torch_trainer(
        DataParallelTrial(job),
        scaling_config=scaling_config(
            num_workers=workers, use_gpu=job.gpus_per_trial > 0, resources_per_worker=per_worker,
            trainer_resources={"CPU": 0},
        ),
        torch_config=torch_config(backend="nccl" if job.gpus_per_trial > 0 else "gloo", timeout_s=timeout),
    )


def _slots(study: Study, n_trials: int) -> int:
    """Trials that could run at once (for the overhead estimate)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    slots = max(1, int(cpus // study.job.cpus_per_trial))
    if study.max_concurrent:
        slots = min(slots, study.max_concurrent)
    return max(1, min(slots, n_trials))


def _start(args: argparse.Namespace, models: Sequence[str], config_files: Sequence[str] | None,
           overrides: Mapping[str, str]) -> Study:
    from recbole_letter.validate import InputError

    try:
        if getattr(args, "tune_resume", None):
            return resume_study(args, models, overrides)
        return prepare_study(args, models, config_files, overrides)
    except InputError:
        raise
    except (HyperFileError, TuningError, FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None  # bad input: the CLI prints one line and exits 2


def run_tuning(
    args: argparse.Namespace,
    models: Sequence[str],
    config_files: Sequence[str] | None,
    overrides: Mapping[str, str],
    callbacks: Sequence[Any] = (),
) -> int:
    """``--tune`` / ``--tune_resume`` entry point (called by :func:`recbole_letter.cli.main`).

    Returns 0 when the study is complete and a trial finished, 1 when no trial finished, and 130
    when the study was interrupted (Ctrl-C): the outputs then cover the trials so far, and
    ``--tune_resume`` continues it. ``callbacks`` are Ray Tune callbacks (for embedding and tests).
    """
    study = _start(args, models, config_files, overrides)
    resume = study.sessions > 1
    save_study(study)
    verb = f"resuming (session {study.sessions})" if resume else "tuning"
    print(f"{verb} {study.model} on {study.dataset}: {study.n_trials} trials, {study.algorithm} search, "
          f"{study.scheduler} scheduler\nstudy: {study.experiment_dir}")
    for param in study.space:
        print(f"  {param.name}: {param.describe()}")
    try:
        with ray_session(getattr(args, "ray_address", None)) as init_seconds:
            grid, fit_started, wall = run_search(study, resume, callbacks)
            rows = report.sort_rows(report.collect_rows(grid, study.space, fit_started), study.bigger)
            slots = _slots(study, len(rows))
            ray_dir = str(getattr(grid, "experiment_path", None) or study.ray_dir)
    except TuningError as exc:
        raise SystemExit(f"error: {exc}") from None
    return _write_outputs(study, rows, fit_started, wall, slots, init_seconds, ray_dir)


def _write_outputs(study: Study, rows: list[dict[str, Any]], fit_started: float, wall: float, slots: int,
                   init_seconds: float, ray_dir: str) -> int:
    """Table, best config, plot and JSON for every trial of the study; prints the summary."""
    names = [p.name for p in study.space]
    done = [r for r in rows if r["status"] != "unfinished"]
    complete = len(done) >= study.n_trials
    best = report.best_row(rows)
    best_path = None
    if best is not None:
        best_path = study.experiment_dir / "best_config.yaml"
        write_text_atomic(best_path, report.best_config_yaml(study, best, len(rows), best_path))
    plot_path = report.plot_trials(
        rows, study.valid_metric, f"{study.model} on {study.dataset}, {study.algorithm} search",
        study.experiment_dir / "trials.png",
    )
    # Timing covers the trials this Tuner.fit ran; a resumed session's earlier trials ran before it.
    this_session = [r for r in rows if not study.sessions > 1 or (r.get("entered_at") or 0.0) >= fit_started]
    timing = report.timing_summary(this_session, wall, slots, init_seconds)
    payload = {
        "model": study.model,
        "dataset": study.dataset,
        "experiment": study.experiment,
        "params_file": study.params_file,
        "space": {p.name: p.describe() for p in study.space},
        "algorithm": study.algorithm,
        "planned_trials": study.n_trials,
        "complete": complete,
        "sessions": study.sessions,
        "scheduler": study.scheduler,
        "valid_metric": study.valid_metric,
        "valid_metric_bigger": study.bigger,
        "ray_version": ray_api.ray_version(),
        "ray_results": ray_dir,
        "best_config": str(best_path) if best_path else None,
        "plot": str(plot_path),
        "timing": timing,
        "trials": rows,
    }
    json_path = write_json_atomic(payload, study.experiment_dir / "trials.json")

    print(f"\n## {study.model} on {study.dataset}: {len(rows)} trials, sorted by valid {study.valid_metric}\n")
    print(report.trials_table(rows, names, study.valid_metric))
    print()
    if best_path is not None:
        print(f"best config: {best_path}  (use with --config_files)")
    else:
        print("no trial finished: no best config written (see the error column)")
    print(f"trial table (JSON): {json_path}\nvalidation curves: {plot_path}\nRay results: {ray_dir}")
    overhead = timing.get("overhead_per_trial_seconds")
    print(
        f"time: Tuner.fit {timing['tuner_fit_seconds']:.1f}s on {slots} slot(s), trials' own runs "
        f"{timing['sum_run_seconds']:.1f}s in total"
        + (f", idle slots at the end {timing['idle_slot_seconds_at_end']:.1f}s, Ray overhead ~{overhead:.1f}s per trial"
           if overhead is not None else "")
    )
    if not complete:
        print(f"\nstudy interrupted: {len(done)} of {study.n_trials} trials done. Continue it with\n"
              f"  python run_recbole_letter.py --tune_resume={study.experiment_dir}")
        return 130
    return 0 if best is not None else 1
