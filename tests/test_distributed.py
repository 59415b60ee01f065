"""Data-parallel training with torch.distributed on CPU (gloo), 2 spawned processes on tiny data.

What is checked: RecBole's multi-process Config starts a gloo group on CPU (RecBole alone asks for
NCCL and a GPU); 2 ranks see disjoint halves of the training rows; 2 ranks with the same global
batch reach the weights of 1 process (shuffle off, no dropout: then each global batch is the same
rows in both runs); sharded full-sort metrics equal one process's metrics of the same weights;
a rank that dies ends the run with an error and leaves no results file and no partial checkpoint.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import recbole_letter  # noqa: F401
from recbole_letter import compat

# Spawned ranks get this sys.path: absolute entries make them import this checkout (not whatever
# ``recbole_letter`` the working directory of a test would resolve to) and these helpers.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from test_tiger import DATASET, SMALL, TIGER_YAML, write_successor_dataset  # noqa: E402

TOPK_METRICS = ["Recall", "NDCG", "MRR"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tiger_config_dict(root: Path, **extra) -> dict:
    return {
        "data_path": str(root),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "MAX_ITEM_LIST_LENGTH": 5,
        "topk": [1, 5, 10],
        "metrics": TOPK_METRICS,
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 12,  # RecBole rounds per rank before averaging: keep rounding out of the comparison
        "repeatable": True,
        "beam_size": 10,
        "epochs": 1,
        "train_batch_size": 64,  # the global batch: 32 rows per rank with 2 ranks
        "train_batches_per_epoch": 3,
        "eval_batch_size": 1024,
        "shuffle": False,
        "dropout_rate": 0.0,
        "learner": "sgd",
        "learning_rate": 0.5,
        "seed": 7,
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": str(root.parent / "saved"),
        **SMALL,
        **extra,
    }


def train_and_evaluate(local_rank: int | None, root: str, out: str, extra: dict) -> None:
    """Train TIGER one (capped) epoch and run full-sort test evaluation; rank 0 / the single process
    saves weights + metrics, every rank its training-row shard. Module level: ``spawn`` imports it."""
    torch.set_num_threads(1)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_letter.generation.trainer import GenerativeTrainer
    from recbole_letter.model.tiger import TIGER
    from recbole_letter.tokenization.semantic_ids import SemanticIDTable
    from decoding import unique_table

    config_dict = tiger_config_dict(Path(root), **extra)
    if local_rank is not None:
        config_dict["local_rank"] = local_rank
    config = Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)], config_dict=config_dict)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(train_data._dataset.item_num - 1, 3, 8, seed=7))
    torch.manual_seed(0)  # equal initial weights everywhere (DDP also broadcasts rank 0's)
    model = TIGER(config, train_data._dataset).to(config["device"])
    trainer = compat.trusted_checkpoint_trainer(GenerativeTrainer)(config, model)
    rank = 0 if local_rank is None else local_rank
    if extra.get("die_on_rank") == rank:
        os._exit(3)  # a crash no Python handler sees, before the first collective of training
    trainer.fit(train_data, None, saved=True)
    metrics = trainer.evaluate(test_data, load_best_model=True)
    shard = list(iter(train_data.sampler)) if local_rank is not None else list(range(len(train_data._dataset)))
    Path(out, f"shard{rank}.json").write_text(json.dumps(shard))
    if rank == 0:
        torch.save({"state": model.state_dict(), "metrics": {k: float(v) for k, v in metrics.items()}}, Path(out, "rank0.pt"))
    if local_rank is not None:
        torch.distributed.destroy_process_group()


def spawn_two(root: Path, out: Path, **extra) -> None:
    extra = {"nproc": 2, "world_size": 2, "ip": "localhost", "port": free_port(), "offset": 0, **extra}
    mp.spawn(train_and_evaluate, args=(str(root), str(out), extra), nprocs=2, join=True)


def test_cpu_process_group_uses_gloo(tmp_path, monkeypatch) -> None:
    """One rank of a 1-process group on CPU: RecBole's own _init_device asks for NCCL + CUDA and fails."""
    from recbole.config import Config

    from recbole_letter.model.tiger import TIGER

    monkeypatch.chdir(tmp_path)
    root = write_successor_dataset(tmp_path / "data")
    keys = {"local_rank": 0, "nproc": 1, "world_size": 1, "ip": "localhost", "port": free_port(), "offset": 0}
    with pytest.raises(Exception):  # without the adaptation: assert on gpu_id / NCCL unavailable
        monkeypatch.setattr(Config, "_init_device", compat._ORIGINAL_INIT_DEVICE)
        Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)], config_dict={**tiger_config_dict(root), **keys})
    assert not torch.distributed.is_initialized()
    monkeypatch.setattr(Config, "_init_device", compat._init_device_any_backend)
    config = Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)], config_dict={**tiger_config_dict(root), **keys})
    try:
        assert torch.distributed.get_backend() == "gloo"
        assert config["single_spec"] is False and config["device"].type == "cpu" and config["world_size"] == 1
    finally:
        torch.distributed.destroy_process_group()
    assert compat.distributed_backend(True) == "nccl" and compat.distributed_backend(False) == "gloo"


def test_two_ranks_match_one_process(tmp_path) -> None:
    root = write_successor_dataset(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    spawn_two(root, two)
    train_and_evaluate(None, str(root), str(one), {})

    # Disjoint shards covering the rows exactly once (the row count is even: no sampler padding).
    shards = [json.loads((two / f"shard{r}.json").read_text()) for r in (0, 1)]
    all_rows = json.loads((one / "shard0.json").read_text())
    assert len(all_rows) % 2 == 0
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == all_rows

    single, parallel = torch.load(one / "rank0.pt", weights_only=False), torch.load(two / "rank0.pt", weights_only=False)
    moved = 0.0
    for name, value in single["state"].items():
        torch.testing.assert_close(parallel["state"][name], value, rtol=1e-4, atol=1e-5)
    init = _initial_state(root)
    moved = max(float((single["state"][n].float() - init[n].float()).abs().max()) for n in init)
    assert moved > 1e-3  # training changed the weights: the equality above is not vacuous

    # Sharded full-sort metrics (each rank ranks its half of the test users, RecBole averages them
    # weighted by rank size) equal one process ranking every user with (within float) the same weights.
    assert set(parallel["metrics"]) == set(single["metrics"])
    for key, value in single["metrics"].items():
        assert parallel["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert any(v > 0 for v in single["metrics"].values())


def _initial_state(root: Path) -> dict:
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_letter.model.tiger import TIGER
    from recbole_letter.tokenization.semantic_ids import SemanticIDTable
    from decoding import unique_table

    config = Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)], config_dict=tiger_config_dict(root))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(train_data._dataset.item_num - 1, 3, 8, seed=7))
    torch.manual_seed(0)
    return TIGER(config, train_data._dataset).state_dict()


def test_dead_rank_ends_the_run_without_partial_files(tmp_path) -> None:
    root = write_successor_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(mp.ProcessExitedException, match="exit code 3"):
        spawn_two(root, out, die_on_rank=1)
    assert list(out.iterdir()) == []  # no metrics, no shard files
    saved = tmp_path / "saved"
    leftovers = [p for p in saved.rglob("*") if p.is_file()] if saved.exists() else []
    assert [p for p in leftovers if p.suffix in {".tmp", ".pth"}] == []
