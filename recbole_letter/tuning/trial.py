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
    workers_per_trial: int = 1  # > 1: the trial trains data-parallel through Ray Train (see run_trial_worker)


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
            try:
                os.symlink(target, link, target_is_directory=True)
            except FileExistsError:  # another worker of the same data-parallel trial made it
                pass
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
        params["torch_num_threads"] = max(1, int(job.cpus_per_trial / job.workers_per_trial))
    return params


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Ray Tune function trainable: one plain run with ``config`` merged over the overrides."""
    _run_trial(config, job, ray_api.report, ranks=None)


class DataParallelTrial:
    """``train_loop_per_worker`` of a data-parallel trial (a Ray Train ``TorchTrainer``).

    Every worker runs the same plain run as :func:`run_trial`, as one rank of the process group
    Ray Train started (gloo on CPU, NCCL on GPU; ``compat.py`` sees the group is up and only sets
    RecBole's rank keys): each rank trains on its shard, gradients are averaged, rank 0 writes the
    checkpoint, evaluation is sharded, and all ranks report (Ray keeps rank 0's metrics). A callable
    object rather than a function with ``job`` bound, because Ray checks that the loop takes at
    most one argument.
    """

    def __init__(self, job: TrialJob) -> None:
        self.job = job

    def __call__(self, config: dict[str, Any]) -> None:
        import torch.distributed as dist

        _run_trial(config, self.job, ray_api.worker_report, ranks=ray_api.worker_ranks())
        # Ray destroys the group when the trial ends. Dropping the last reference to a gloo group
        # right after a collective can deadlock (recbole_letter.distributed._rank_entry): keep one,
        # so the group is freed only when the worker process ends.
        _KEEP_GROUPS.append(dist.group.WORLD)


_KEEP_GROUPS: list[Any] = []


def _run_trial(config: dict[str, Any], job: TrialJob, report: Any, ranks: tuple[int, int, int, int] | None) -> None:
    from recbole_letter import compat

    compat.apply()  # normally done already by the worker setup hook (before Ray's own imports); idempotent
    import ray

    from recbole_letter.quick_start import run_recbole_letter

    entered = time.time()
    trial = ray_api.trial_id()
    ckpt = trial_checkpoint_dir(job, trial)
    gpu_ids = ray.get_gpu_ids() if job.gpus_per_trial > 0 else []
    params = trial_params(job, config, ckpt, gpu_ids)
    if ranks is not None:  # a rank of a data-parallel trial: RecBole's multi-process keys
        world_rank, local_rank, world_size, local_world_size = ranks
        params.update(local_rank=local_rank, nproc=local_world_size, world_size=world_size,
                      offset=world_rank - local_rank)
        if job.gpus_per_trial > 0:  # Ray Train shows co-located workers all their node's GPUs; rank i uses cuda:i
            params["gpu_id"] = os.environ.get("CUDA_VISIBLE_DEVICES", params["gpu_id"])
    pick = max if job.valid_metric_bigger else min
    curve: list[list[float]] = []  # [epoch, valid score] after every validation
    best: list[float] = []  # best valid score so far (RecBole keeps the best checkpoint, so ASHA compares that)

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        score = float(valid_score)
        best.append(score if not best else pick(best[-1], score))
        curve.append([int(epoch_idx) + 1, score])
        report({METRIC: best[-1], "valid_score": score, "epoch": int(epoch_idx) + 1, "valid_curve": list(curve)})

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
    report(
        {
            "ranks": _process_group_size(),
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


def _process_group_size() -> int:
    """Ranks of the process group this trial trained in (1 without one): what the run really used."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
