"""``--tune``: hyper-parameter search with Ray Tune, every trial under the plain-run protocol.

The package, bottom to top:

* :mod:`~recbole_letter.tuning.ray_api`: the Ray entry points that moved between Ray 2.6.3
  (RecBole's pin) and current Ray.
* :mod:`~recbole_letter.tuning.search`: ``.hyper`` dimensions as Ray domains; the ``grid``,
  ``random`` (no repeats) and ``tpe`` algorithms.
* :mod:`~recbole_letter.tuning.trial`: one trial inside a Ray worker (a plain run plus reports).
* :mod:`~recbole_letter.tuning.study`: the request validated and planned on the driver before
  Ray starts, saved as ``study.json`` so ``--tune_resume`` can continue it.
* :mod:`~recbole_letter.tuning.report`: trial table, ``trials.json``, ``best_config.yaml``, plot.
* :mod:`~recbole_letter.tuning.run`: the entry point that ties them together.
"""
from recbole_letter.tuning.ray_api import TuningError
from recbole_letter.tuning.run import run_tuning

__all__ = ["TuningError", "run_tuning"]
