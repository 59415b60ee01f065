"""Search algorithms over a ``.hyper`` space: ``grid``, ``random`` (never the same trial twice), ``tpe``.

RecBole users know two algorithms from ``run_hyper.py``: ``exhaustive`` (every combination of the
``choice`` values) and hyperopt's TPE. Plain random sampling with repeats serves neither: with
``choice [0.001,0.003]`` and two trials it may run 0.001 twice, an hour lost on a large model.

* ``grid`` and ``random`` decide every trial's configuration on the driver, before Ray starts, and
  hand the list to Ray's ``BasicVariantGenerator`` as ``points_to_evaluate`` (one trial per point,
  in order). The list is therefore exact (each grid combination once; no repeated random draw),
  seeded by the config's ``seed``, the same on Ray 2.6.3 and current Ray, and restored by Ray
  when a study resumes.
* ``tpe`` is Ray's ``HyperOptSearch`` (hyperopt's Tree-structured Parzen Estimator, what RecBole's
  ``HyperTuning`` uses). Its first ``initial_points`` trials are random draws; later ones are
  proposed from the scores so far (default: half the trials are random starts, at most 20). TPE
  may propose a configuration it has already tried, which is hyperopt's behaviour and RecBole's.
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Any, Sequence

from recbole_letter.hyper import HyperParam
from recbole_letter.tuning.ray_api import TuningError, hyperopt_search_class

ALGORITHMS = ("grid", "random", "tpe")
# Trials used by random/tpe when --tune_samples is not given (a grid runs every combination).
DEFAULT_SAMPLES = 4
# hyperopt's own number of random trials before TPE starts modelling; RecBole keeps it. A study
# smaller than twice that would be random search under another name, so by default half the
# trials are random starts, at most this many.
HYPEROPT_INITIAL_POINTS = 20
# Draws per wanted trial before random search gives up finding new configurations.
_DRAWS_PER_TRIAL = 1000


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


def distinct_values(param: HyperParam) -> int | None:
    """How many different values a dimension can produce; None when continuous."""
    if param.kind == "choice":
        return len({_key(c) for c in param.choices})
    if param.kind == "randint":
        return int(param.high - param.low)
    if param.kind == "quniform":
        q = float(param.q or 1.0)
        return max(1, math.floor(param.high / q + 1e-9) - math.ceil(param.low / q - 1e-9) + 1)
    return None


def space_size(space: Sequence[HyperParam]) -> int | None:
    """Number of distinct configurations of ``space``; None when any dimension is continuous."""
    sizes = [distinct_values(p) for p in space]
    return None if any(s is None for s in sizes) else math.prod(s for s in sizes if s is not None)


def default_algorithm(space: Sequence[HyperParam]) -> str:
    """``grid`` when every dimension is a ``choice`` (RecBole's ``exhaustive``), else ``random``."""
    return "grid" if all(p.kind == "choice" for p in space) else "random"


def plan_trials(space: Sequence[HyperParam], algorithm: str | None, samples: int | None) -> tuple[str, int]:
    """``(algorithm, number of trials)`` for a request, or a :class:`TuningError` naming the fix."""
    algo = algorithm or default_algorithm(space)
    if algo not in ALGORITHMS:
        raise TuningError(f"--tune_algo={algo} is not known. Fix: use one of {', '.join(ALGORITHMS)}.")
    if samples is not None and samples < 1:
        raise TuningError(f"--tune_samples={samples} must be >= 1. Fix: e.g. --tune_samples=8.")
    if algo == "grid":
        continuous = [f"{p.name} ({p.kind})" for p in space if p.kind != "choice"]
        if continuous:
            raise TuningError(
                f"--tune_algo=grid needs every dimension to be a choice; {', '.join(continuous)} is not. "
                f"Fix: use --tune_algo=random or --tune_algo=tpe, or write those lines as 'choice [...]'."
            )
        size = math.prod(len(p.choices) for p in space)
        if samples is not None and samples != size:
            raise TuningError(
                f"--tune_samples={samples}, but the grid has {size} combinations and runs each once. "
                f"Fix: drop --tune_samples, or use --tune_algo=random for {samples} of them."
            )
        return algo, size
    trials = DEFAULT_SAMPLES if samples is None else samples
    if algo == "random":
        size = space_size(space)
        if size is not None and trials > size:
            raise TuningError(
                f"--tune_samples={trials}, but the space has only {size} distinct configurations "
                f"and random search never repeats one. Fix: --tune_samples={size} (or --tune_algo=grid "
                f"when every dimension is a choice), or widen the space."
            )
    return algo, trials


def default_initial_points(trials: int) -> int:
    """Random trials before TPE models the scores: half the study, at most hyperopt's 20."""
    return max(1, min(HYPEROPT_INITIAL_POINTS, trials // 2))


def grid_configs(space: Sequence[HyperParam]) -> list[dict[str, Any]]:
    """Every combination of the ``choice`` values, each once, in file order (last dimension fastest)."""
    names = [p.name for p in space]
    return [dict(zip(names, values)) for values in itertools.product(*(p.choices for p in space))]


def random_configs(space: Sequence[HyperParam], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` different configurations drawn from the space's distributions, seeded by ``seed``.

    A draw equal to an earlier one is discarded (sampling without replacement). Callers check
    with :func:`plan_trials` that the space has ``count`` configurations; the draw limit only
    guards against spaces whose few remaining values are very unlikely.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    domains = [(p.name, ray_domain(p)) for p in space]
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(_DRAWS_PER_TRIAL * count):
        config = {name: _plain(domain.sample(random_state=rng)) for name, domain in domains}
        key = _key(config)
        if key not in seen:
            seen.add(key)
            configs.append(config)
            if len(configs) == count:
                return configs
    raise TuningError(
        f"random search found only {len(configs)} different configurations in {_DRAWS_PER_TRIAL * count} draws. "
        f"Fix: lower --tune_samples to {len(configs)} or widen the space."
    )


def search_algorithm(
    algorithm: str,
    space: Sequence[HyperParam],
    planned: Sequence[dict[str, Any]],
    trials: int,
    seed: int,
    initial_points: int | None,
    max_concurrent: int | None,
    nest_under: str | None = None,
) -> tuple[Any, dict[str, Any], int | None]:
    """``(Ray search algorithm, param_space, max_concurrent_trials)`` for one study.

    ``planned`` are the grid/random configurations decided on the driver (see the module
    docstring); ``tpe`` has none, as its trials depend on earlier scores. Ray applies
    ``TuneConfig(max_concurrent_trials=...)`` only to a ``Searcher`` such as HyperOptSearch and
    ignores it, with a warning, for ``BasicVariantGenerator``, which takes its own limit.
    ``nest_under`` puts the space (and the planned points) under one key: a Ray Trainer in a Tuner
    takes its sampled values from ``train_loop_config``.
    """
    from ray.tune.search import BasicVariantGenerator

    param_space = {p.name: ray_domain(p) for p in space}
    if nest_under:
        param_space = {nest_under: param_space}
        planned = [{nest_under: dict(c)} for c in planned]
    if algorithm == "tpe":
        hyperopt_search = hyperopt_search_class()
        startup = initial_points if initial_points is not None else default_initial_points(trials)
        return hyperopt_search(n_initial_points=startup, random_state_seed=seed), param_space, max_concurrent
    if len(planned) != trials:
        raise ValueError(f"{len(planned)} planned configurations for {trials} trials")  # a bug, not user input
    points = [dict(c) for c in planned]
    generator = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent or 0, random_state=seed)
    return generator, param_space, None


def _plain(value: Any) -> Any:
    """Numpy scalars -> Python scalars, so configurations compare and serialise as plain values."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _key(value: Any) -> str:
    """A hashable identity for a configuration or value (lists inside choices are not hashable)."""
    return json.dumps(value, sort_keys=True, default=repr)
