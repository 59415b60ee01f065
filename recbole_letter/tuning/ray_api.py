"""The Ray entry points whose location or signature changed between Ray 2.6.3 and current Ray.

RecBole 1.2.1 pins ``ray<=2.6.3``, which has no wheels for Python >= 3.12, so users run either.
Everything else in :mod:`recbole_letter.tuning` uses APIs both versions share (``tune.Tuner``,
``Tuner.restore``, ``TuneConfig``, ``with_parameters``, ``with_resources``, ``BasicVariantGenerator``,
``HyperOptSearch``); what moved is picked here, newest location first:

* reporting metrics from a trial: ``ray.tune.report(metrics)`` (current Ray, dict positional), else
  ``ray.train.report(metrics)`` (2.7-2.4x), else ``ray.air.session.report(metrics)`` (2.6). The old
  ``tune.report(**kwargs)`` of 2.6 has a different signature and is never used.
* the trial's id: ``ray.tune.get_context()``, else ``ray.train.get_context()``, else ``ray.air.session``.
* ``RunConfig``/``FailureConfig``: ``ray.tune.*`` (current), else ``ray.train.*`` (2.7+), else
  ``ray.air.*`` (2.6). Current Ray deprecates passing ``ray.train`` configs to a Tuner.
"""
from __future__ import annotations

import inspect
from typing import Any


class TuningError(ValueError):
    """A tuning request that cannot run as given (the message names the fix)."""


def report(metrics: dict[str, Any]) -> None:
    """Report one result from inside a trial (see the module docstring for the order tried)."""
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


def hyperopt_search_class() -> type:
    """Ray's ``HyperOptSearch`` (TPE); a clear error when hyperopt is not installed.

    Ray's own module imports fine without hyperopt and only asserts at construction, with a
    message that does not name this package's install route.
    """
    try:
        import hyperopt  # noqa: F401
    except ImportError:
        raise TuningError(
            "--tune_algo=tpe needs hyperopt, which is not installed. "
            "Fix: pip install 'hyperopt>=0.2.7' (or reinstall this package, which depends on it)."
        ) from None
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch


def can_restore(path: str) -> bool:
    """Whether ``path`` holds a Ray Tune experiment that ``Tuner.restore`` can continue."""
    from ray import tune

    return bool(tune.Tuner.can_restore(path))


def ray_version() -> str:
    import ray

    return str(ray.__version__)


# ----------------------------------------------------------------------------- data-parallel trials
# A trial with tune_workers_per_trial > 1 is a Ray Train TorchTrainer passed to the Tuner (how Ray
# 2.6-2.4x combine Tune and Train). Ray Train V2 (current Ray, RAY_TRAIN_V2_ENABLED) no longer
# accepts a Trainer in a Tuner: there the Trainer must be started inside a function trainable,
# which this package does not do (README "Data-parallel training", Ray section).


def torch_trainer_classes() -> tuple[type, type, type]:
    """``(TorchTrainer, ScalingConfig, TorchConfig)`` of the installed Ray."""
    from ray.train.torch import TorchConfig, TorchTrainer

    try:
        from ray.train import ScalingConfig  # Ray 2.7+
    except ImportError:
        from ray.air.config import ScalingConfig  # Ray 2.6
    return TorchTrainer, ScalingConfig, TorchConfig


def worker_report(metrics: dict[str, Any]) -> None:
    """Report from every worker of a data-parallel trial (Ray Train keeps rank 0's metrics)."""
    from ray import train

    if hasattr(train, "report"):  # Ray 2.7+
        train.report(metrics)
        return
    from ray.air import session  # Ray 2.6

    session.report(metrics)


def worker_ranks() -> tuple[int, int, int, int]:
    """``(world_rank, local_rank, world_size, local_world_size)`` of this Ray Train worker."""
    from ray import train

    if hasattr(train, "get_context"):  # Ray 2.7+
        ctx = train.get_context()
    else:
        from ray.air import session as ctx  # Ray 2.6: module-level functions of the same names
    return (int(ctx.get_world_rank()), int(ctx.get_local_rank()), int(ctx.get_world_size()),
            int(ctx.get_local_world_size()))
