"""One trial, run inside a Ray worker: a plain run with the trial's sampled values merged in.

A trial is exactly ``run_recbole_letter(model, dataset, config_files, overrides | trial values)``:
same config cascade, same split, same metrics as a plain run. It reports after every validation
(RecBole's ``callback_fn``), so ASHA can stop weak trials early, and its final best-valid and test
results at the end. Every report carries the validation curve so far, so the last report of any
trial (finished, or stopped by ASHA) is enough to draw it.

Each trial gets its own ``checkpoint_dir`` (``<experiment>/trials/<trial>/``): RecBole names model
checkpoints ``<Model>-<time to the second>.pth``, so trials started in the same second would
overwrite each other's checkpoint and test the wrong model if they shared a directory. ``stages``
and ``datasets`` inside it are symlinks to the shared ``<checkpoint_dir>/stages`` and ``datasets``,
so cached stages are still computed once (the cache's file locks and renames act on the real
directory).
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from recbole_letter.tuning import ray_api

LOGGER = logging.getLogger("recbole_letter")

METRIC = "best_valid_score"
# Subdirectories of checkpoint_dir that trials share through symlinks.
SHARED_SUBDIRS = ("stages", "datasets")


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


def trial_checkpoint_dir(job: TrialJob, trial: str) -> Path:
    """This trial's own checkpoint_dir, with the shared stage/dataset caches linked in.

    A model checkpoint already there is from an earlier attempt of this same trial that an
    interrupt cut off (``--tune_resume`` reruns such trials from the start): it is removed, so
    the folder holds only the checkpoint of the run that reports.
    """
    own = Path(job.trials_dir) / trial
    own.mkdir(parents=True, exist_ok=True)
    for stale in own.glob(f"{job.model}-*.pth"):
        LOGGER.info("trial %s: removing %s of an interrupted earlier attempt", trial, stale.name)
        stale.unlink()
    for sub in SHARED_SUBDIRS:
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
    trial = ray_api.trial_id()
    ckpt = trial_checkpoint_dir(job, trial)
    gpu_ids = ray.get_gpu_ids() if job.gpus_per_trial > 0 else []
    params = trial_params(job, config, ckpt, gpu_ids)
    pick = max if job.valid_metric_bigger else min
    curve: list[list[float]] = []  # [epoch, valid score] after every validation
    best: list[float] = []  # best valid score so far (RecBole keeps the best checkpoint, so ASHA compares that)

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        score = float(valid_score)
        best.append(score if not best else pick(best[-1], score))
        curve.append([int(epoch_idx) + 1, score])
        ray_api.report({METRIC: best[-1], "valid_score": score, "epoch": int(epoch_idx) + 1, "valid_curve": list(curve)})

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
    ray_api.report(
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
            "valid_curve": curve,
            "finished": True,
        }
    )
