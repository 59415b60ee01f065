"""Collaborative-filtering item embeddings for LETTER's contrastive term.

By default RecBole's own LightGCN is trained on the *training split only* of the same dataset
(same protocol, so the same leave-one-out split; no validation or test interaction is seen, and
it trains a fixed ``cf_epochs`` without validation-based early stopping for the same reason).
``cf_model: SASRec`` uses RecBole's SASRec instead; ``cf_embedding_file`` loads a user ``.npy``
(e.g. the LETTER paper's ``Instruments-32d-sasrec.npy``, row i = item i). Results are cached in
the stage cache keyed by the interaction file and every key that shapes the split or the model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from recbole_letter.config import require
from recbole_letter.data.item_matrix import dataset_item_tokens, load_item_matrix, pad_item_matrix
from recbole_letter.stages.stage_cache import stage_cache_for, stage_key

LOGGER = logging.getLogger("recbole_letter")
STAGE = "cf_embeddings"
SUPPORTED_CF_MODELS = ("LightGCN", "SASRec")

# Config keys that decide which interactions form the training split; the CF run copies them
# from the calling run so both see the same data.
_SPLIT_KEYS = (
    "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "field_separator", "seq_separator", "load_col",
    "unload_col", "unused_col", "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item",
    "user_inter_num_interval", "item_inter_num_interval", "eval_args", "MAX_ITEM_LIST_LENGTH",
    "seed", "checkpoint_dir", "device", "use_gpu", "gpu_id",
)


def _cf_settings(config: Any) -> tuple[str, int, dict]:
    name = require(config, "cf_model")
    matches = [m for m in SUPPORTED_CF_MODELS if m.lower() == str(name).lower()]
    if not matches:
        raise ValueError(
            f"cf_model={name!r} is not supported. Fix: use one of {SUPPORTED_CF_MODELS}, or give a "
            f"precomputed matrix with cf_embedding_file=<path.npy>."
        )
    epochs = require(config, "cf_epochs")
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"cf_epochs={epochs!r} must be a positive integer.")
    overrides = require(config, "cf_config", allow_none=True) or {}  # ~ = no overrides
    if not isinstance(overrides, dict):
        raise ValueError(f"cf_config={overrides!r} must be a mapping of RecBole keys for the CF model.")
    return matches[0], epochs, dict(overrides)


def check_cf_config(config: Any) -> None:
    """Raise the clear error for a bad ``cf_model`` / ``cf_epochs`` / ``cf_config`` now, before
    any stage runs (nothing to check when ``cf_embedding_file`` supplies the matrix)."""
    if not config["cf_embedding_file"]:
        _cf_settings(config)


def _extract_item_embeddings(model: Any) -> np.ndarray:
    """Final item representations of a trained RecBole model, internal-id order."""
    import torch

    model.eval()
    with torch.no_grad():
        if hasattr(model, "get_ego_embeddings") and hasattr(model, "forward"):
            _, items = model.forward()  # graph models: propagated embeddings, as used for scoring
        else:
            items = model.item_embedding.weight
    return items.detach().cpu().numpy().astype(np.float32)


def _cf_model_class(name: str) -> type:
    """RecBole's class for a supported CF model (a built-in: no registry look-up needed)."""
    if name == "SASRec":
        from recbole.model.sequential_recommender import SASRec

        return SASRec
    from recbole.model.general_recommender import LightGCN

    return LightGCN


def cf_run_config(config: Any, out_dir: Path | None = None) -> tuple[Any, type, dict]:
    """The RecBole Config the CF model trains with, its class, and the ``cf_config`` overrides
    (built without training, so the runner can check those values before any stage runs)."""
    name, epochs, overrides = _cf_settings(config)
    return _cf_config(config, name, epochs, overrides, out_dir or Path(config["checkpoint_dir"] or "saved")), \
        _cf_model_class(name), overrides


def _cf_config(config: Any, name: str, epochs: int, overrides: dict, out_dir: Path) -> Any:
    from recbole_letter.config import build_config

    params = {k: config[k] for k in _SPLIT_KEYS if config[k] is not None}
    params.update(overrides)
    params.update(
        {
            "data_path": str(Path(config["data_path"]).parent),
            "epochs": epochs,
            "show_progress": False,
            "checkpoint_dir": str(out_dir),
        }
    )
    return build_config(_cf_model_class(name), config["dataset"], config_dict=params)


def _train_cf_model(config: Any, name: str, epochs: int, overrides: dict, out_dir: Path) -> None:
    """Train ``name`` on the training split of ``config``'s dataset and save embeddings by token."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_seed

    from recbole_letter import compat

    model_class = _cf_model_class(name)
    cf_config = _cf_config(config, name, epochs, overrides, out_dir)
    init_seed(cf_config["seed"], cf_config["reproducibility"])
    data = create_dataset(cf_config)
    train_data, _valid, _test = data_preparation(cf_config, data)
    init_seed(cf_config["seed"], cf_config["reproducibility"])
    model = model_class(cf_config, train_data._dataset).to(cf_config["device"])
    trainer = compat.trusted_checkpoint_trainer(get_trainer(model_class.type, name))(cf_config, model)
    # No valid_data: nothing outside the training split influences the embeddings.
    trainer.fit(train_data, None, saved=False, show_progress=False)
    items = _extract_item_embeddings(model)
    tokens = dataset_item_tokens(data)
    np.save(out_dir / "embeddings.npy", items[1:])
    (out_dir / "tokens.json").write_text(json.dumps(tokens), encoding="utf-8")
    for leftover in out_dir.glob("*.pth"):
        leftover.unlink()


def item_cf_embeddings(config: Any, dataset: Any) -> np.ndarray:
    """CF embeddings aligned with RecBole internal item ids: float32 ``[item_num, d]``, row 0 zeros."""
    tokens = dataset_item_tokens(dataset)
    path = config["cf_embedding_file"]
    if path:
        return pad_item_matrix(load_item_matrix(path, tokens, "cf_embedding_file"))

    name, epochs, overrides = _cf_settings(config)
    inter_file = Path(config["data_path"]) / f"{config['dataset']}.inter"
    params = {
        "cf_model": name,
        "cf_epochs": epochs,
        "cf_config": overrides,
        "split": {k: config[k] for k in _SPLIT_KEYS if k not in ("checkpoint_dir", "device", "use_gpu", "gpu_id")},
    }
    key = stage_key(STAGE, [inter_file], params)
    entry = stage_cache_for(config).get_or_compute(
        STAGE, key, lambda out: _train_cf_model(config, name, epochs, overrides, out)
    )
    cached = json.loads((entry / "tokens.json").read_text(encoding="utf-8"))
    vectors = np.load(entry / "embeddings.npy")
    row = {t: i for i, t in enumerate(cached)}
    missing = [t for t in tokens if t not in row]
    if missing:
        LOGGER.warning(
            "%d of %d items have no CF embedding (absent from the CF training split); they get zeros",
            len(missing), len(tokens),
        )
    out = np.zeros((len(tokens) + 1, vectors.shape[1]), dtype=np.float32)
    present = np.array([i + 1 for i, t in enumerate(tokens) if t in row], dtype=np.int64)
    out[present] = vectors[[row[tokens[i - 1]] for i in present]]
    return out
