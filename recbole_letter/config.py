"""The config layer: a RecBole ``Config`` for one model class under this package's protocol.

Everything that needs a config with our YAML cascade (the runner, the CF-embedding stage that
trains a RecBole model, benchmarks) builds it here. This module sits below the runner and knows
no model by name: callers hand it a model *class*, whose default YAMLs it finds from the class
itself (``default_config_names``, else the class name), so nothing here imports the registry.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from recbole_letter import compat
from recbole_letter.cpu_memory import reuse_freed_memory
from recbole_letter.data.bundled import check_inter_columns, resolve_dataset_dir

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"

# RecBole's default training negatives (recbole/properties/overall.yaml).
_DEFAULT_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def model_config_files(model_class: type, name: str | None = None) -> tuple[Path, ...]:
    """Default YAMLs of a model, in order. A model may list several via ``default_config_names``
    (TIGER reads the tokenizer's LETTER.yaml before its own; RQVAE shares LETTER.yaml)."""
    names = getattr(model_class, "default_config_names", (name or model_class.__name__,))
    paths = (PROPERTIES_DIR / "model" / f"{n}.yaml" for n in names)
    return tuple(p for p in paths if p.is_file())


def _files_set(key: str, files: Sequence[str]) -> bool:
    """Whether any YAML file in the cascade sets ``key`` at top level."""
    import yaml

    for file in files:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if isinstance(data, dict) and key in data:
            return True
    return False


@contextlib.contextmanager
def _argv_without_flags() -> Iterator[None]:
    """Hide ``sys.argv`` from RecBole's Config, which parses every ``--key=value`` it sees.

    Our entry point parses the command line itself and passes values as ``config_dict``; letting
    Config read argv again would apply them twice and choke on flags like ``--tune``.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_letter"]
    try:
        yield
    finally:
        sys.argv = saved


def config_file_list(
    model_files: Sequence[str | Path], dataset: str, user_files: Sequence[str] | None
) -> list[str]:
    """The YAML cascade: overall < model/<M> < dataset/<D> < user files (later wins)."""
    files = [PROPERTIES_DIR / "overall.yaml", *(Path(f) for f in model_files)]
    dataset_file = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
    if dataset_file.is_file():
        files.append(dataset_file)
    for user_file in user_files or []:
        path = Path(user_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file '{user_file}' not found. Fix: pass existing YAML files to --config_files."
            )
        files.append(path)
    return [str(f) for f in files]


def validate_protocol(config: Any) -> None:
    """Reject config values RecBole would accept silently or fail on much later."""
    topk = config["topk"]
    topk = [topk] if isinstance(topk, int) else topk
    if not topk or any(not isinstance(k, int) or k <= 0 for k in topk):
        raise ValueError(f"topk={config['topk']!r} must be positive integers. Fix: e.g. --topk=[5,10,20].")
    metric = str(config["valid_metric"])
    name, _, k = metric.partition("@")
    known = {m.lower() for m in config["metrics"]}
    if name.lower() not in known or (k and int(k) not in topk):
        raise ValueError(
            f"valid_metric={metric} is not among metrics {config['metrics']} @ topk {topk}. "
            f"Fix: pick one of those, e.g. --valid_metric=NDCG@10."
        )
    for key in ("epochs", "train_batch_size", "eval_batch_size"):
        value = config[key]
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{key}={value!r} must be a positive integer. Fix: e.g. --{key}=10.")


def build_config(
    model_class: type,
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    model_files: Sequence[str | Path] | None = None,
) -> Any:
    """A RecBole Config for ``model_class`` on ``dataset`` under this package's protocol.

    ``model_files`` are the model's default YAMLs; ``None`` finds them from the class
    (:func:`model_config_files`).
    """
    from recbole.config import Config
    from recbole.utils import ModelType

    if model_files is None:
        model_files = model_config_files(model_class)
    files = config_file_list(model_files, dataset, config_files)
    params = dict(config_dict or {})
    sequential = model_class.type == ModelType.SEQUENTIAL
    negatives_given = "train_neg_sample_args" in params or _files_set("train_neg_sample_args", files)
    if sequential and not negatives_given:
        # RecBole's default samples one negative, which Config rejects for CE-loss sequential
        # models (SASRec, TIGER...); BPR-loss ones get the default back below.
        params["train_neg_sample_args"] = None
    with _argv_without_flags():
        config = Config(model=model_class, dataset=dataset, config_file_list=files, config_dict=params)
    if sequential and not negatives_given and config["loss_type"] != "CE":
        config["train_neg_sample_args"] = dict(_DEFAULT_NEGATIVES)
    raw_data_path = config.external_config_dict.get("data_path") or "dataset/"
    dataset_dir = resolve_dataset_dir(dataset, raw_data_path, config["checkpoint_dir"])
    compat.set_data_path(config, dataset_dir)
    required = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
    if config["eval_args"]["order"] == "TO":
        required.append(config["TIME_FIELD"])
    check_inter_columns(dataset_dir, dataset, required)
    validate_protocol(config)
    threads = config["torch_num_threads"]
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if config["cpu_reuse_freed_memory"]:
        reuse_freed_memory(True)
    return config


def defining_yaml(key: str, model_class: type | None = None) -> str | None:
    """Which of this package's YAMLs gives ``key`` its default (the model's own files first)."""
    import yaml

    files = [*(model_config_files(model_class) if model_class is not None else ()), PROPERTIES_DIR / "overall.yaml"]
    files += sorted((PROPERTIES_DIR / "model").glob("*.yaml"))  # stage keys (LETTER.yaml) serve several models
    for file in files:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if isinstance(data, dict) and key in data:
            return f"properties/{file.relative_to(PROPERTIES_DIR).as_posix()}"
    return None


def require(config: Any, key: str, model_class: type | None = None, allow_none: bool = False) -> Any:
    """``config[key]``, failing loudly where RecBole would return None for a key nobody set.

    Defaults live only in ``properties/*.yaml``; the error names the file that defines ``key`` so
    a caller who built a config by hand knows what to load. ``allow_none`` accepts a key that is
    present with the value ``~`` (None is then a meaningful setting) but still rejects an absent one.
    """
    present = key in config
    value = config[key] if present else None
    if not present or (value is None and not allow_none):
        where = defining_yaml(key, model_class)
        fix = f"load {where} (the runner does) or set it explicitly" if where else "set it explicitly"
        raise ValueError(f"config key {key!r} is missing; {fix}")
    return value
