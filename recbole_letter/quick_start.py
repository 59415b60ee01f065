"""Run any model (ours or RecBole's) under one protocol; several models -> one results table.

Mirrors ``recbole.quick_start`` (``run_recbole``, ``objective_function``) but drives
Config / create_dataset / data_preparation / Trainer itself, because RecBole's versions can only
find models inside ``recbole.model`` and import Ray at module load.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from recbole_letter import compat
from recbole_letter.atomic import write_json_atomic
from recbole_letter.data.bundled import check_inter_columns, resolve_dataset_dir
from recbole_letter.registry import PROPERTIES_DIR, ModelSpec, resolve_model

LOGGER = logging.getLogger("recbole_letter")

# RecBole's default training negatives (recbole/properties/overall.yaml).
_DEFAULT_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


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


def config_file_list(spec: ModelSpec, dataset: str, user_files: Sequence[str] | None) -> list[str]:
    """The YAML cascade: overall < model/<M> < dataset/<D> < user files (later wins)."""
    files = [PROPERTIES_DIR / "overall.yaml", *spec.config_files]
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


def _validate_protocol(config: Any) -> None:
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
            raise ValueError(f"{key}={value!r} must be a positive integer.")


def build_config(
    model: str | ModelSpec,
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
) -> tuple[Any, ModelSpec]:
    """A RecBole Config for ``model`` on ``dataset`` under this package's protocol."""
    from recbole.config import Config
    from recbole.utils import ModelType

    spec = model if isinstance(model, ModelSpec) else resolve_model(model)
    files = config_file_list(spec, dataset, config_files)
    params = dict(config_dict or {})
    sequential = spec.model_class.type == ModelType.SEQUENTIAL
    negatives_given = "train_neg_sample_args" in params or _files_set("train_neg_sample_args", files)
    if sequential and not negatives_given:
        # RecBole's default samples one negative, which Config rejects for CE-loss sequential
        # models (SASRec, TIGER...); BPR-loss ones get the default back below.
        params["train_neg_sample_args"] = None
    with _argv_without_flags():
        config = Config(model=spec.model_class, dataset=dataset, config_file_list=files, config_dict=params)
    if sequential and not negatives_given and config["loss_type"] != "CE":
        config["train_neg_sample_args"] = dict(_DEFAULT_NEGATIVES)
    raw_data_path = config.external_config_dict.get("data_path") or "dataset/"
    dataset_dir = resolve_dataset_dir(dataset, raw_data_path, config["checkpoint_dir"])
    compat.set_data_path(config, dataset_dir)
    required = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
    if config["eval_args"]["order"] == "TO":
        required.append(config["TIME_FIELD"])
    check_inter_columns(dataset_dir, dataset, required)
    _validate_protocol(config)
    threads = config["torch_num_threads"]
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return config, spec


def _split_fingerprint(*datasets: Any) -> str:
    """Identify a split by its evaluation rows so a multi-model table can prove all rows share one split.

    Hashes the sorted (user, item) tokens of each given split (valid, test): these are the same for
    sequential and general models on one split, whereas dataset sizes are not (sequential data
    augmentation rewrites ``inter_feat`` in place).
    """
    digest = hashlib.sha256()
    for ds in datasets:
        users = ds.id2token(ds.uid_field, ds.inter_feat[ds.uid_field].numpy())
        items = ds.id2token(ds.iid_field, ds.inter_feat[ds.iid_field].numpy())
        digest.update("\n".join(sorted(f"{u}\t{i}" for u, i in zip(users, items))).encode() + b"|")
    return digest.hexdigest()[:12]


def run_recbole_letter(
    model: str,
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    epoch_callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model; returns RecBole-style results plus timing.

    ``epoch_callback(epoch_idx, valid_score)`` is RecBole's ``callback_fn``: the trainer calls it
    after every validation, which is how a Ray Tune trial reports per-epoch scores so a scheduler
    (ASHA) can stop bad trials early.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    config, spec = build_config(model, dataset, config_files, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = spec.model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = spec.trainer_class(config, net)

    fit_kwargs: dict[str, Any] = {}
    if epoch_callback is not None:
        if _accepts_callback(trainer.fit):
            fit_kwargs["callback_fn"] = epoch_callback
        else:
            LOGGER.warning(
                "%s.fit has no callback_fn: no per-epoch validation reports (a tuning scheduler sees only "
                "the final result). Fix: use --tune_scheduler=fifo for this model.", type(trainer).__name__
            )
    started = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], **fit_kwargs
    )
    fit_seconds = time.perf_counter() - started
    epochs = len(getattr(trainer, "train_loss_dict", {}) or {}) or None
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    return {
        "model": spec.name,
        "dataset": dataset,
        "best_valid_score": _to_float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": _floats(best_valid_result),
        "test_result": _floats(test_result),
        "fit_seconds": round(fit_seconds, 2),
        "epochs": epochs,
        "seconds_per_epoch": round(fit_seconds / epochs, 2) if epochs else None,
        "split": _split_fingerprint(valid_data._dataset, test_data._dataset),
        "checkpoint": getattr(trainer, "saved_model_file", None) if saved else None,
    }


def _accepts_callback(fit: Callable[..., Any]) -> bool:
    """Whether a trainer's ``fit`` takes RecBole's ``callback_fn`` (tree-model trainers do not)."""
    params = inspect.signature(fit).parameters
    return "callback_fn" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _to_float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _floats(result: Any) -> dict[str, Any]:
    return {str(k): _to_float(v) for k, v in dict(result or {}).items()}


def objective_function(
    config_dict: dict | None = None, config_file_list: Sequence[str] | None = None, saved: bool = False
) -> dict[str, Any]:
    """RecBole-compatible objective for tuning: ``config_dict`` must hold ``model`` and ``dataset``."""
    params = dict(config_dict or {})
    model = params.pop("model")
    dataset = params.pop("dataset")
    return run_recbole_letter(model, dataset, config_file_list, params, saved=saved)


# ---------------------------------------------------------------- results tables


def results_table(results: Sequence[dict[str, Any]], split: str = "test_result") -> str:
    """One markdown table: a row per model, a column per metric (union over models)."""
    columns: list[str] = []
    for res in results:
        for key in res.get(split) or {}:
            if key not in columns:
                columns.append(key)
    failed = any(res.get("error") for res in results)
    header = ["model", *columns, "epochs", "s/epoch"] + (["error"] if failed else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for res in results:
        values = res.get(split) or {}
        cells = [res["model"]]
        for col in columns:
            value = values.get(col)
            cells.append(f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value)))
        cells.append("" if res.get("epochs") is None else str(res["epochs"]))
        cells.append("" if res.get("seconds_per_epoch") is None else f"{res['seconds_per_epoch']:.1f}")
        if failed:
            cells.append(str(res.get("error", "")).replace("|", "/").replace("\n", " ")[:200])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_models(
    models: Sequence[str],
    dataset: str,
    config_files: Sequence[str] | None = None,
    config_dict: dict | None = None,
    results_dir: str | Path | None = None,
    saved: bool = True,
) -> tuple[list[dict[str, Any]], Path]:
    """Run several models in turn on the same data; returns their results and the JSON path.

    A model that fails is recorded with its error and the others still run; the JSON file is
    rewritten after every model so finished results are never lost.
    """
    specs = [resolve_model(m) for m in models]  # unknown names fail before any training
    for spec in specs:  # so do config/data errors (missing dataset or column, bad metric, bad file)
        build_config(spec, dataset, config_files, config_dict)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(results_dir or (config_dict or {}).get("checkpoint_dir") or "saved") / "results"
    out = root / f"{dataset}-{'-'.join(s.name for s in specs)}-{stamp}.json"
    results: list[dict[str, Any]] = []
    for spec in specs:
        try:
            res = run_recbole_letter(spec.name, dataset, config_files, config_dict, saved=saved)
        except Exception as exc:  # keep the other models' results
            LOGGER.error("model %s failed:\n%s", spec.name, traceback.format_exc())
            res = {"model": spec.name, "dataset": dataset, "error": f"{type(exc).__name__}: {exc}"}
        results.append(res)
        write_json_atomic({"dataset": dataset, "results": results}, out)
    splits = {r["split"] for r in results if "split" in r}
    if len(splits) > 1:
        LOGGER.warning("models ran on different data splits %s: their rows are not comparable", splits)
    return results, out
