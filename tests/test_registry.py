"""Model registry: ours first, RecBole's built-ins case-insensitively, clear errors otherwise."""
from __future__ import annotations

import importlib.util

import pytest
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.general_recommender import LightGCN
from recbole.model.sequential_recommender import SASRec as RecBoleSASRec
from recbole.trainer import AbstractTrainer, Trainer
from recbole.utils import ModelType

from recbole_letter import registry
from recbole_letter.registry import ModelSpec, UnknownModelError, resolve_model


class _LocalTrainer(Trainer):
    """A model-specific trainer, as our generative models declare one."""


class SASRec(SequentialRecommender):
    """A test-local model that shadows RecBole's SASRec by name (registered as 'ours' below)."""

    type = ModelType.SEQUENTIAL
    trainer_class = _LocalTrainer


class Plain(SequentialRecommender):
    """A test-local model without its own trainer: RecBole picks one by model type."""

    type = ModelType.SEQUENTIAL


@pytest.fixture()
def ours_shadow_sasrec(monkeypatch):
    monkeypatch.setattr(
        registry, "_OUR_MODELS", {**registry._OUR_MODELS, "SASRec": f"{__name__}:SASRec", "Plain": f"{__name__}:Plain"}
    )


def test_our_models_resolve_before_recbole(ours_shadow_sasrec) -> None:
    for name in ("SASRec", "sasrec", " SASREC "):
        spec = resolve_model(name)
        assert spec.model_class is SASRec and spec.model_class is not RecBoleSASRec
        assert spec.source == "recbole_letter" and spec.name == "SASRec"
        assert issubclass(spec.trainer_class, _LocalTrainer)  # the model's own trainer_class ...
        assert "evaluate" in vars(spec.trainer_class)  # ... with the trusted-checkpoint override
    assert registry.known_model_names().count("SASRec") == 1  # listed once, ours first
    plain = resolve_model("plain")
    assert plain.model_class is Plain and issubclass(plain.trainer_class, Trainer)


def test_registered_models_point_into_our_package() -> None:
    assert set(registry._OUR_MODELS) >= {"LETTER", "RQVAE", "TIGER"}
    for name, target in registry._OUR_MODELS.items():
        assert target.startswith("recbole_letter.model.") and target.endswith(f":{name}")
    assert registry.known_model_names()[:3] == list(registry._OUR_MODELS)[:3]


def _ours_available(name: str) -> bool:
    return importlib.util.find_spec(registry._OUR_MODELS[name].partition(":")[0]) is not None


@pytest.mark.parametrize(("given", "expected"), [("tiger", "TIGER"), ("letter", "LETTER"), ("RqVaE", "RQVAE")])
def test_our_models_resolve_by_name(given: str, expected: str) -> None:
    if not _ours_available(expected):
        pytest.skip(f"{expected} not implemented yet")
    spec = resolve_model(given)
    assert spec.name == expected and spec.source == "recbole_letter"
    assert spec.model_class.__name__ == expected
    assert spec.model_class.__module__.startswith("recbole_letter.model.")
    assert issubclass(spec.trainer_class, AbstractTrainer)


@pytest.mark.parametrize(
    ("given", "expected", "model_type"),
    [
        ("sasrec", "SASRec", ModelType.SEQUENTIAL),
        ("SASRec", "SASRec", ModelType.SEQUENTIAL),
        ("lightgcn", "LightGCN", ModelType.GENERAL),
        ("LIGHTGCN", "LightGCN", ModelType.GENERAL),
        ("bpr", "BPR", ModelType.GENERAL),
        ("gru4rec", "GRU4Rec", ModelType.SEQUENTIAL),
    ],
)
def test_recbole_names_resolve_case_insensitively(given: str, expected: str, model_type: ModelType) -> None:
    spec = resolve_model(given)
    assert isinstance(spec, ModelSpec)
    assert spec.name == expected and spec.model_class.__name__ == expected
    assert spec.model_class.__module__.startswith("recbole.model.")
    assert spec.model_class.type == model_type
    assert spec.source == "recbole"


def test_recbole_trainers_get_the_trusted_checkpoint_override() -> None:
    spec = resolve_model("lightgcn")
    assert spec.model_class is LightGCN
    assert issubclass(spec.trainer_class, Trainer) and spec.trainer_class is not Trainer
    assert vars(spec.trainer_class)["evaluate"] is not Trainer.evaluate
    assert "resume_checkpoint" in vars(spec.trainer_class)
    assert resolve_model("LightGCN").trainer_class is spec.trainer_class  # one subclass per base

    from recbole.trainer import NCLTrainer

    ncl = resolve_model("ncl")  # RecBole's model-specific trainer is kept underneath
    assert issubclass(ncl.trainer_class, NCLTrainer) and "evaluate" in vars(ncl.trainer_class)


def test_our_model_config_files_are_found() -> None:
    spec = resolve_model("SASRec")
    assert all(p.is_file() and p.suffix == ".yaml" for p in spec.config_files)
    assert all(p.parent == registry.PROPERTIES_DIR / "model" for p in spec.config_files)


@pytest.mark.parametrize("name", ["NoSuchModel", "foo.bar", "lightgbm", "sas rec"])
def test_unknown_model_lists_known_names(name: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model(name)
    message = str(info.value)
    assert f"'{name.strip()}'" in message
    for known in ("SASRec", "TIGER", "LETTER", "LightGCN", "BPR"):
        assert known in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


def test_known_names_cover_recbole_builtins() -> None:
    names = registry.recbole_model_names()
    assert {"SASRec", "GRU4Rec", "BPR", "LightGCN", "NCL", "BERT4Rec"} <= set(names)
    assert list(names) == sorted(names) and len(names) == len(set(names))
    for name in ("SASRec", "LightGCN", "Pop"):  # every listed name resolves to itself
        assert resolve_model(name).name == name


@pytest.mark.parametrize("name", ["", "   ", None])
def test_empty_model_name(name) -> None:
    with pytest.raises(UnknownModelError, match="Empty model name"):
        resolve_model(name)
