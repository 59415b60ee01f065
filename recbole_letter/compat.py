"""The one place that adapts RecBole 1.2.1 (and the Ray it pins) to today's numpy/scipy/torch.

RecBole 1.2.1 was released against numpy 1.x, scipy < 1.13 and torch < 2.6. Each shim below
names what upstream breaks, is applied idempotently by :func:`apply` (run on ``import
recbole_letter`` and, through :func:`ray_worker_setup`, inside every Ray worker), and has a test in
``tests/test_compat.py`` that fails without it.

Breakages avoided by *version pins* instead of code live in ``pyproject.toml`` (``pandas<3``:
RecBole's ``token_seq`` loading; ``setuptools<81``: ``pkg_resources`` for ray 2.6.3/hyperopt).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

_APPLIED = False

# numpy 2 removed these aliases. RecBole's Config touches np.float_/np.complex_/np.unicode_ in
# every ``Config(...)`` (its yaml/eval type handling) and ray 2.6.3's tune import touches np.bool8.
_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
}


def _restore_numpy_aliases() -> None:
    """Re-add removed numpy aliases, only where absent (never shadow a real attribute)."""
    for old, new in _NUMPY_ALIASES.items():
        if old not in np.__dict__:
            setattr(np, old, getattr(np, new))


def _restore_dok_update() -> None:
    """scipy >= 1.13 dropped ``dok_matrix._update``.

    RecBole's graph models (LightGCN, NGCF, GCMC, SpectralCF, NCL, KGIN, MCCLK) build their
    normalised adjacency with ``A._update(dict)``; without it graph construction raises
    AttributeError. The old method was a bulk ``dict.update`` of ``{(row, col): value}``; the
    modern dok_matrix keeps its entries in ``_dict``, and element assignment is the supported way
    to update it, so we route through ``_dict`` when present (fast) and fall back to item setting.
    """
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return

    def _update(self: Any, data: dict) -> None:
        store = getattr(self, "_dict", None)
        if isinstance(store, dict):
            store.update(data)
        else:  # pragma: no cover - other scipy layouts
            for key, value in data.items():
                self[key] = value

    sp.dok_matrix._update = _update


def apply() -> None:
    """Apply every runtime shim once per process. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _restore_numpy_aliases()
    _restore_dok_update()
    _APPLIED = True


def ray_worker_setup() -> None:
    """``worker_process_setup_hook`` for Ray: workers are fresh interpreters and need the shims too."""
    apply()


def load_trusted_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by RecBole's own Trainer.

    torch >= 2.6 defaults to ``weights_only=True``; RecBole checkpoints pickle the Config object,
    so its ``evaluate(load_best_model=True)``, ``resume_checkpoint`` and ``load_data_and_model``
    raise UnpicklingError. The files are our own run's output, so full unpickling is acceptable;
    never call this on a checkpoint from an untrusted source.
    """
    import torch

    return torch.load(str(path), map_location=map_location, weights_only=False)


@functools.lru_cache(maxsize=None)
def trusted_checkpoint_trainer(base: type) -> type:
    """Subclass a RecBole Trainer class so it reloads its own checkpoints on torch >= 2.6.

    Only the two methods that call ``torch.load`` are touched; the rest of the trainer (early
    stopping, evaluation, logging) is RecBole's unchanged. Cached so each base gets one subclass.
    """

    class _TrustedCheckpointTrainer(base):  # type: ignore[misc, valid-type]
        def resume_checkpoint(self, resume_file):  # noqa: D401 - RecBole signature
            checkpoint = load_trusted_checkpoint(resume_file, self.device)
            self.saved_model_file = str(resume_file)
            self.start_epoch = checkpoint["epoch"] + 1
            self.cur_step = checkpoint["cur_step"]
            self.best_valid_score = checkpoint["best_valid_score"]
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            if eval_data and load_best_model:
                checkpoint_file = model_file or self.saved_model_file
                checkpoint = load_trusted_checkpoint(checkpoint_file, self.device)
                self.model.load_state_dict(checkpoint["state_dict"])
                self.model.load_other_parameter(checkpoint.get("other_parameter"))
                self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
            return super().evaluate(
                eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
            )

    _TrustedCheckpointTrainer.__name__ = base.__name__
    _TrustedCheckpointTrainer.__qualname__ = base.__qualname__
    _TrustedCheckpointTrainer.__doc__ = base.__doc__
    return _TrustedCheckpointTrainer


def set_data_path(config: Any, dataset_dir: str | Path) -> None:
    """Point a built Config at the dataset folder we resolved.

    RecBole's Config forces ``data_path`` to its bundled copy whenever the dataset is named
    ``ml-100k``, ignoring the user's ``data_path``; our resolver decides (user data wins), and
    this writes the decision back after Config has run.
    """
    config["data_path"] = str(dataset_dir)


apply()
