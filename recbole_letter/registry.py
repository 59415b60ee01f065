"""Model name -> (model class, trainer class, default config file): ours first, then RecBole's.

RecBole's own ``get_model`` only looks inside ``recbole.model``, so it cannot find external
models; this registry resolves our models by name, falls back to every RecBole built-in, matches
names case-insensitively (``sasrec`` -> ``SASRec``) and lists the known names when nothing matches.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from recbole_letter import compat
from recbole_letter.config import PROPERTIES_DIR, model_config_files

__all__ = ["PROPERTIES_DIR", "ModelSpec", "UnknownModelError", "known_model_names", "resolve_model"]

# Our models: name -> "module:Class". Imported lazily so that a SASRec run never imports
# transformers.
_OUR_MODELS: dict[str, str] = {
    "LETTER": "recbole_letter.model.letter:LETTER",
    "RQVAE": "recbole_letter.model.letter:RQVAE",
    "TIGER": "recbole_letter.model.tiger:TIGER",
    "LCRec": "recbole_letter.model.lcrec:LCRec",
    "STORE": "recbole_letter.model.store:STORE",
}

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


class UnknownModelError(ValueError):
    """A model name that is neither ours nor a RecBole built-in."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runner needs to build and train one model."""

    name: str
    model_class: type
    trainer_class: type
    config_files: tuple[Path, ...]
    source: str  # "recbole_letter" or "recbole"


@lru_cache(maxsize=1)
def recbole_model_names() -> tuple[str, ...]:
    """Names of every RecBole built-in model (class name == file name, case-insensitively)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names: set[str] = set()
    for sub in _RECBOLE_SUBMODULES:
        try:  # exlib_recommender's __init__ imports the optional lightgbm and xgboost
            package = importlib.import_module(f"recbole.model.{sub}")
        except ImportError:
            continue
        for info in pkgutil.iter_modules(package.__path__):
            try:
                module = importlib.import_module(f"recbole.model.{sub}.{info.name}")
            except Exception:  # an optional dependency of one model must not hide the others
                continue
            for attr, obj in vars(module).items():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, AbstractRecommender)
                    and attr.lower() == info.name
                ):
                    names.add(attr)
    return tuple(sorted(names))


def known_model_names() -> list[str]:
    """Our models, then RecBole's, for error messages and ``--help``."""
    return list(_OUR_MODELS) + [n for n in recbole_model_names() if n not in _OUR_MODELS]


def _trainer_for(model_class: type, name: str) -> type:
    """The model's own ``trainer_class`` if it has one, else RecBole's choice for its type."""
    trainer = getattr(model_class, "trainer_class", None)
    if trainer is None:
        from recbole.utils import get_trainer

        trainer = get_trainer(model_class.type, name)
    if not getattr(trainer, "uses_recbole_checkpoints", True):
        return trainer
    return compat.trusted_checkpoint_trainer(trainer)


def _load_ours(name: str) -> type:
    module_name, _, attr = _OUR_MODELS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _find_recbole_model(name: str) -> type | None:
    lowered = name.lower()
    for sub in _RECBOLE_SUBMODULES:
        module_path = f"recbole.model.{sub}.{lowered}"
        try:  # an optional dependency missing (lightgbm...) or a dotted name is just "not found"
            if importlib.util.find_spec(module_path) is None:
                continue
            module = importlib.import_module(module_path)
        except ImportError:
            continue
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and attr.lower() == lowered:
                return obj
    return None


def resolve_model(name: str) -> ModelSpec:
    """Resolve ``name`` (case-insensitive) to a :class:`ModelSpec`, ours first."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError("Empty model name. Fix: pass --model=<Name>, e.g. --model=SASRec.")
    name = name.strip()
    for ours in _OUR_MODELS:
        if ours.lower() == name.lower():
            cls = _load_ours(ours)
            return ModelSpec(ours, cls, _trainer_for(cls, ours), model_config_files(cls, ours), "recbole_letter")
    cls = _find_recbole_model(name)
    if cls is not None:
        return ModelSpec(cls.__name__, cls, _trainer_for(cls, cls.__name__), model_config_files(cls), "recbole")
    raise UnknownModelError(
        f"Unknown model '{name}'. Fix: use one of: {', '.join(known_model_names())}."
    )
