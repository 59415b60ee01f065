"""Each shim in ``recbole_letter.compat`` has a test here that fails without it.

The pattern: remove the shim (monkeypatch), show RecBole breaks the way upstream breaks on
numpy 2 / scipy >= 1.13 / torch >= 2.6, then show the shim makes it work.
"""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_letter import compat
from recbole_letter.quick_start import build_config, run_recbole_letter


# ----------------------------------------------------------------------------- numpy aliases


def test_numpy_aliases_present_and_point_to_the_new_names() -> None:
    for old, new in compat._NUMPY_ALIASES.items():
        assert getattr(np, old) is getattr(np, new), old


def test_recbole_config_needs_the_numpy_aliases(tiny_seq_dataset, fast_config, monkeypatch) -> None:
    root = tiny_seq_dataset()
    params = {**fast_config, "data_path": str(root), "train_neg_sample_args": None}
    config, _ = build_config("SASRec", "tiny", config_dict=params)  # works with the shim
    assert config["model"] == "SASRec"

    from recbole.config import Config

    monkeypatch.delattr(np, "float_")  # what numpy 2 looks like without the shim
    with pytest.raises(AttributeError, match="float_"):
        Config(model="SASRec", dataset="tiny", config_dict=params)

    compat._restore_numpy_aliases()
    assert np.float_ is np.float64
    assert Config(model="SASRec", dataset="tiny", config_dict=params)["model"] == "SASRec"


def test_restore_numpy_aliases_fills_every_missing_alias_and_never_shadows(monkeypatch) -> None:
    for old in compat._NUMPY_ALIASES:
        if old in np.__dict__ and np.__dict__[old] is not getattr(np, compat._NUMPY_ALIASES[old]):
            continue  # a real numpy attribute of another meaning: never ours to remove or set
        monkeypatch.delattr(np, old, raising=False)  # RecBole's Config may have set it already
    sentinel = object()
    monkeypatch.setattr(np, "bool8", sentinel, raising=False)  # a "real" attribute must survive
    compat._restore_numpy_aliases()
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.unicode_ is np.str_
    assert np.bool8 is sentinel


def test_metrics_of_a_loaded_checkpoint_work_without_building_a_config() -> None:
    """``load_data_and_model`` unpickles the Config, so RecBole's ``compatibility_settings`` never
    runs; its NDCG uses ``np.float``, which numpy 2 removed. A fresh process that only applied the
    shim must still compute NDCG (it raised AttributeError before the builtin-named aliases)."""
    code = (
        "import numpy as np; import recbole_letter.compat as c; c.apply(); "
        "from recbole.evaluator.metrics import NDCG; "
        "r = NDCG.metric_info(None, np.array([[True, False], [False, False]]), np.array([1, 1])); "
        "print(round(float(r[0, 1]), 4), round(float(r[1, 1]), 4))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1.0", "0.0"]


def test_every_recbole_ensure_dir_survives_a_directory_created_concurrently(tmp_path) -> None:
    """Two ranks start together and both create ``./log`` (init_logger) or ``saved/``: RecBole's
    check-then-create ``ensure_dir`` raised FileExistsError in the second one. Simulate the race
    (the check says "absent", the directory exists) in every module that binds the function."""
    code = (
        "import os, sys; import recbole_letter; "
        "import recbole.utils.logger, recbole.utils, recbole.utils.utils, recbole.data.utils, recbole.trainer.trainer; "
        "os.path.exists = lambda p: False; "
        "[sys.modules[m].ensure_dir(sys.argv[1]) for m in ('recbole.utils.logger', 'recbole.utils', "
        "'recbole.utils.utils', 'recbole.data.utils', 'recbole.trainer.trainer')]; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------- dok_matrix._update


def test_dok_update_sets_entries() -> None:
    matrix = sp.dok_matrix((3, 4), dtype=np.float32)
    matrix[0, 0] = 7.0
    matrix._update({(0, 1): 1.5, (2, 3): -2.0, (np.int64(1), np.int32(2)): 4.0})
    dense = matrix.toarray()
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 0], expected[0, 1], expected[2, 3], expected[1, 2] = 7.0, 1.5, -2.0, 4.0
    np.testing.assert_array_equal(dense, expected)
    assert matrix.nnz == 4
    coo = matrix.tocoo()  # the path LightGCN takes after _update
    assert sorted(zip(coo.row.tolist(), coo.col.tolist())) == [(0, 0), (0, 1), (1, 2), (2, 3)]


def _lightgcn_inputs(root: Path, fast_config: dict):
    from recbole.data import create_dataset, data_preparation

    config, spec = build_config("LightGCN", "tiny", config_dict={**fast_config, "data_path": str(root)})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return config, spec, train_data


def test_lightgcn_graph_needs_dok_update(tiny_seq_dataset, fast_config, monkeypatch) -> None:
    config, spec, train_data = _lightgcn_inputs(tiny_seq_dataset(), fast_config)
    model = spec.model_class(config, train_data._dataset)  # builds the normalised adjacency
    n = model.n_users + model.n_items
    assert tuple(model.norm_adj_matrix.shape) == (n, n)
    # every training interaction appears twice (user->item and item->user) in the graph
    assert model.norm_adj_matrix._nnz() == 2 * len(train_data._dataset.inter_feat)

    monkeypatch.delattr(sp.dok_matrix, "_update")
    with pytest.raises(AttributeError, match="_update"):
        spec.model_class(config, train_data._dataset)


def test_lightgcn_trains_one_epoch_through_the_runner(tiny_seq_dataset, fast_config) -> None:
    root = tiny_seq_dataset()
    result = run_recbole_letter("LightGCN", "tiny", config_dict={**fast_config, "data_path": str(root)}, saved=False)
    assert result["model"] == "LightGCN" and result["epochs"] == 1
    test = result["test_result"]
    assert set(test) >= {"recall@10", "ndcg@10"}
    assert all(0.0 <= v <= 1.0 for v in test.values())


# ----------------------------------------------------------------------------- trusted checkpoints


@pytest.fixture()
def sasrec_run(tiny_seq_dataset, fast_config):
    root = tiny_seq_dataset()
    params = {**fast_config, "data_path": str(root)}
    result = run_recbole_letter("SASRec", "tiny", config_dict=params, saved=True)
    return params, result


def test_checkpoint_needs_full_unpickling(sasrec_run) -> None:
    _, result = sasrec_run
    path = Path(result["checkpoint"])
    assert path.is_file() and path.parent.name == "saved"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # torch >= 2.6: weights_only=True rejects the pickled Config
    checkpoint = compat.load_trusted_checkpoint(path)
    assert {"state_dict", "config", "epoch", "optimizer"} <= set(checkpoint)
    assert checkpoint["config"]["model"] == "SASRec"


def test_best_model_reload_gives_identical_scores(sasrec_run) -> None:
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    params, result = sasrec_run
    path = result["checkpoint"]
    config, spec = build_config("SASRec", "tiny", config_dict=params)
    _, _, test_data = data_preparation(config, create_dataset(config))

    # a freshly initialised model with other weights than the trained one
    init_seed(config["seed"] + 1, True)
    model = spec.model_class(config, test_data._dataset)
    trained = compat.load_trusted_checkpoint(path)["state_dict"]
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in trained.items())

    # upstream Trainer cannot reload its own checkpoint on torch >= 2.6 ...
    with pytest.raises(pickle.UnpicklingError):
        Trainer(config, model).evaluate(test_data, load_best_model=True, model_file=path)

    # ... ours can, and the reloaded model reproduces the run's test metrics exactly
    trainer = spec.trainer_class(config, model)
    assert isinstance(trainer, Trainer) and type(trainer) is not Trainer
    reloaded = trainer.evaluate(test_data, load_best_model=True, model_file=path)
    assert {k: float(v) for k, v in reloaded.items()} == result["test_result"]
    for key, value in trained.items():
        assert torch.equal(model.state_dict()[key], value), key

    # same scores tensor from a second, independently reloaded model
    model2 = spec.model_class(config, test_data._dataset)
    spec.trainer_class(config, model2).evaluate(test_data, load_best_model=True, model_file=path)
    model.eval(), model2.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(batch), model2.full_sort_predict(batch))


def test_resume_checkpoint(sasrec_run) -> None:
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer

    params, result = sasrec_run
    config, spec = build_config("SASRec", "tiny", config_dict=params)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = spec.model_class(config, train_data._dataset)
    with pytest.raises(pickle.UnpicklingError):
        Trainer(config, model).resume_checkpoint(result["checkpoint"])
    trainer = spec.trainer_class(config, model)
    trainer.resume_checkpoint(result["checkpoint"])
    assert trainer.start_epoch == 1  # one epoch was trained and saved
    assert trainer.best_valid_score == pytest.approx(result["best_valid_score"], abs=1e-4)


def test_trusted_trainer_is_cached_and_keeps_the_base_name() -> None:
    from recbole.trainer import Trainer

    a = compat.trusted_checkpoint_trainer(Trainer)
    assert a is compat.trusted_checkpoint_trainer(Trainer)
    assert issubclass(a, Trainer) and a.__name__ == "Trainer"
    assert a.evaluate is not Trainer.evaluate and a.resume_checkpoint is not Trainer.resume_checkpoint


# ----------------------------------------------------------------------------- Ray workers


def test_ray_worker_setup_importable_by_dotted_name_and_idempotent() -> None:
    module_name, _, attr = "recbole_letter.compat.ray_worker_setup".rpartition(".")
    hook = getattr(importlib.import_module(module_name), attr)
    assert hook is compat.ray_worker_setup
    # Ray ships the hook with cloudpickle: it must travel by reference, not by value
    from ray import cloudpickle

    payload = cloudpickle.dumps(hook)
    assert b"recbole_letter.compat" in payload and b"ray_worker_setup" in payload
    assert pickle.loads(payload) is hook

    update = sp.dok_matrix._update
    hook()
    hook()
    assert sp.dok_matrix._update is update
    assert all(getattr(np, old) is getattr(np, new) for old, new in compat._NUMPY_ALIASES.items())


def test_ray_worker_setup_in_a_fresh_interpreter() -> None:
    """A Ray worker is a new process: the hook alone must bring every shim in."""
    code = (
        "import numpy as np, scipy.sparse as sp\n"
        "assert not hasattr(np, 'float_') and not hasattr(sp.dok_matrix, '_update')\n"
        "import importlib\n"
        "hook = getattr(importlib.import_module('recbole_letter.compat'), 'ray_worker_setup')\n"
        "hook(); hook()\n"
        "assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.unicode_ is np.str_\n"
        "m = sp.dok_matrix((2, 2)); m._update({(1, 0): 3.0}); assert m[1, 0] == 3.0\n"
        "import sys; assert 'recbole' not in sys.modules  # the shims do not drag RecBole in\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
