"""Data-parallel training with torch.distributed on CPU (gloo), 2 spawned processes on tiny data.

What is checked: RecBole's multi-process Config starts a gloo group on CPU (RecBole alone asks for
NCCL and a GPU); 2 ranks see disjoint halves of the training rows; 2 ranks with the same global
batch reach the weights of 1 process (shuffle off, no dropout: then each global batch is the same
rows in both runs); sharded full-sort metrics equal one process's metrics of the same weights
(RecBole's protocol and ``eval_mask_history``);
a rank that dies ends the run with an error and leaves no results file and no partial checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import recbole_letter  # noqa: F401
from recbole_letter import compat, distributed

# Spawned ranks get this sys.path: absolute entries make them import this checkout (not whatever
# ``recbole_letter`` the working directory of a test would resolve to) and these helpers.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from conftest import write_inter  # noqa: E402
from run_settings import leave_one_out_full_sort  # noqa: E402
from test_tiger import DATASET, SMALL, TIGER_YAML, write_successor_dataset  # noqa: E402

TOPK_METRICS = ["Recall", "NDCG", "MRR"]


# Every multi-process test is bounded: collectives time out after DDP_TIMEOUT s (a lost peer is an
# error, not a hang) and the ranks as a whole are killed after RANKS_DEADLINE s.
DDP_TIMEOUT = 120
RANKS_DEADLINE = 600


def hosted_rendezvous(world_size: int) -> tuple[object, dict]:
    """A rendezvous store held by this process on a port the OS picks at bind time: no other
    process can take the port between choosing and using it (the hang seen with a free_port()
    helper). Keep the returned store alive while the ranks run."""
    store = distributed.host_store(0, world_size, distributed.as_timeout(DDP_TIMEOUT))
    return store, {"ip": "localhost", "port": store.port, "ddp_hosted_store": True, "ddp_timeout": DDP_TIMEOUT}


def tiger_config_dict(root: Path, **extra) -> dict:
    return {
        "data_path": str(root),
        **leave_one_out_full_sort(),
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "MAX_ITEM_LIST_LENGTH": 5,
        "topk": [1, 5, 10],
        "metrics": TOPK_METRICS,
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 12,  # RecBole rounds per rank before averaging: keep rounding out of the comparison
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
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(train_data._dataset.item_num - 1, 3, 8, seed=7))
    torch.manual_seed(0)  # equal initial weights everywhere (DDP also broadcasts rank 0's)
    model = TIGER(config, train_data._dataset).to(config["device"])
    trainer = compat.trusted_checkpoint_trainer(GenerativeTrainer)(config, model)
    rank = 0 if local_rank is None else local_rank
    if extra.get("die_on_rank") == rank:
        os._exit(3)  # a crash no Python handler sees, before the first collective of training
    trainer.fit(train_data, None, saved=True)
    metrics = trainer.evaluate(test_data, load_best_model=True)
    # the same weights ranked under eval_mask_history (the runner's hook on the loaders)
    from recbole_letter.history_mask import mask_history

    config["eval_mask_history"] = True
    assert mask_history(config, train_data, valid_data, test_data)
    masked = trainer.evaluate(test_data, load_best_model=False)
    shard = list(iter(train_data.sampler)) if local_rank is not None else list(range(len(train_data._dataset)))
    Path(out, f"shard{rank}.json").write_text(json.dumps(shard))
    if rank == 0:
        torch.save({"state": model.state_dict(), "metrics": {k: float(v) for k, v in metrics.items()},
                    "masked": {k: float(v) for k, v in masked.items()}}, Path(out, "rank0.pt"))
    # No destroy_process_group: spawn_ranks ends the rank with os._exit (see distributed._rank_entry).


def spawn_two(root: Path, out: Path, **extra) -> None:
    store, rendezvous = hosted_rendezvous(2)
    extra = {"nproc": 2, "world_size": 2, "offset": 0, **rendezvous, **extra}
    distributed.spawn_ranks(train_and_evaluate, (str(root), str(out), extra), 2, deadline_seconds=RANKS_DEADLINE)
    del store


def test_cpu_process_group_uses_gloo(tmp_path, monkeypatch) -> None:
    """One rank of a 1-process group on CPU: RecBole's own _init_device asks for NCCL + CUDA and fails."""
    from recbole.config import Config

    from recbole_letter.model.tiger import TIGER

    monkeypatch.chdir(tmp_path)
    root = write_successor_dataset(tmp_path / "data")
    store, rendezvous = hosted_rendezvous(1)
    keys = {"local_rank": 0, "nproc": 1, "world_size": 1, "offset": 0, **rendezvous}
    # Without the adaptation RecBole's rank 0 hosts tcp://ip:port itself (its own port: ours is held
    # by the hosted store) and asks for NCCL, which a CPU build lacks. Races for this port can only
    # make the error another one, which the match below would report.
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        recbole_port = sock.getsockname()[1]
    with pytest.raises(Exception) as without:
        monkeypatch.setattr(Config, "_init_device", compat._ORIGINAL_INIT_DEVICE)
        Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)],
               config_dict={**tiger_config_dict(root), **keys, "port": recbole_port})
    assert re.search("nccl|cuda|gpu", str(without.value), re.IGNORECASE), repr(without.value)
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
    # So do they with eval_mask_history (each rank masks its own rows' earlier items).
    for protocol in ("metrics", "masked"):
        assert set(parallel[protocol]) == set(single[protocol])
        for key, value in single[protocol].items():
            assert parallel[protocol][key] == pytest.approx(value, abs=1e-6), (protocol, key)
        assert any(v > 0 for v in single[protocol].values())
    assert single["masked"] != single["metrics"]  # the mask changed the ranking: not the same numbers twice


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
    with pytest.raises(distributed.RankFailedError, match="rank 1 of 2 .*exited with code 3"):
        spawn_two(root, out, die_on_rank=1)
    assert list(out.iterdir()) == []  # no metrics, no shard files
    saved = tmp_path / "saved"
    leftovers = [p for p in saved.rglob("*") if p.is_file()] if saved.exists() else []
    assert [p for p in leftovers if p.suffix in {".tmp", ".pth"}] == []


# ----------------------------------------------------------------------------- the CLI, end to end

REPO = Path(__file__).resolve().parents[1]
CLI_ITEMS = 25


def cli_command(work: Path, *extra: str) -> list[str]:
    """``run_recbole_letter.py --model=TIGER --nproc=2`` on a tiny dataset: the LETTER tokenizer is
    fitted (rank 0; the other rank waits and reads the stage cache), then TIGER trains on 2 ranks."""
    data = work / "data"
    if not (data / "tiny").is_dir():
        write_inter(data, "tiny", n_users=40, n_items=CLI_ITEMS, min_len=6, max_len=10)
        np.save(work / "emb.npy", np.random.default_rng(0).standard_normal((CLI_ITEMS + 1, 16)).astype(np.float32))
    return [
        sys.executable, str(REPO / "run_recbole_letter.py"), "--model=TIGER", "--dataset=tiny",
        f"--data_path={data}", f"--checkpoint_dir={work / 'saved'}", f"--item_embedding_file={work / 'emb.npy'}",
        "--nproc=2", f"--ddp_timeout={DDP_TIMEOUT}", "--train_batch_size=64", "--MAX_ITEM_LIST_LENGTH=5",
        "--num_encoder_layers=1", "--num_decoder_layers=1", "--d_model=32", "--num_heads=2", "--d_kv=16",
        "--d_ff=64", "--codebook_size=8", "--num_levels=3", "--tokenizer_hidden_dims=[16]", "--code_dim=8",
        "--n_div_clusters=2", "--tokenizer_epochs=2", "--kmeans_iters=5", "--cf_epochs=1", "--beam_size=20",
        *extra,
    ]


def cli_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("launcher", ["nproc", "torchrun"])
def test_cli_two_ranks_run_tiger_end_to_end(tmp_path, launcher) -> None:
    """``--nproc=2`` (RecBole's keys: this command spawns the ranks) and ``torchrun
    --nproc_per_node=2`` (env:// rendezvous: torchrun starts two copies of the command)."""
    command = cli_command(tmp_path, "--epochs=2")
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   *[a for a in command[1:] if a != "--nproc=2"]]
    done = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=RANKS_DEADLINE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TIGER" in done.stdout and "ndcg@10" in done.stdout.lower()
    saved = tmp_path / "saved"
    results = list((saved / "results").glob("*.json"))
    assert len(results) == 1  # rank 0 only
    test_result = json.loads(results[0].read_text())["results"][0]["test_result"]
    assert set(test_result) >= {"recall@10", "ndcg@10"} and all(0 <= v <= 1 for v in test_result.values())
    # One complete entry per stage (rank 0 fitted; the other rank waited and read it), no temp folders.
    for stage in ("cf_embeddings", "tokenizer"):
        entries = list((saved / "stages" / stage).iterdir())
        assert len(entries) == 1 and (entries[0] / "manifest.json").is_file(), entries
    assert len(list(saved.glob("*.pth"))) == 1
    assert [p for p in files_under(saved) if p.name.endswith(".tmp")] == []


def test_cli_rank_killed_mid_training_exits_nonzero_with_nothing_half_written(tmp_path) -> None:
    """SIGKILL one rank once training has saved its first checkpoint: the run must end (not hang),
    exit non-zero naming the rank, write no results file and leave only complete files."""
    saved = tmp_path / "saved"
    cli = subprocess.Popen(
        cli_command(tmp_path, "--epochs=400", "--stopping_step=400"), cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + RANKS_DEADLINE
        while not list(saved.glob("*.pth")):
            assert cli.poll() is None, f"the run ended before training: {cli.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the deadline"
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(cli.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
                 and "resource_tracker" not in " ".join(p.cmdline())]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        victim = max(ranks, key=lambda p: p.create_time())
        victim.kill()
        out, err = cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:  # never leave the run behind (this test started it)
            for child in psutil.Process(cli.pid).children(recursive=True):
                child.kill()
            cli.kill()
            cli.wait()
    assert cli.returncode == 1, err[-3000:]
    assert re.search(r"RankFailedError: rank [01] of 2 \(pid \d+\) was killed by SIGKILL", err), err[-3000:]
    assert "nothing unfinished was written" in err
    assert not (saved / "results").exists() or list((saved / "results").iterdir()) == []
    leftovers = files_under(saved)
    assert [p for p in leftovers if p.name.endswith(".tmp") or ".tmp-" in str(p)] == []
    for checkpoint in saved.glob("*.pth"):  # complete files only: each loads
        assert "state_dict" in compat.load_trusted_checkpoint(checkpoint)


# ----------------------------------------------------------------------------- spawn_ranks itself


def test_a_raising_rank_stops_the_sleeping_one_and_is_named(tmp_path) -> None:
    from rank_helpers import sleep_or_raise

    started = time.monotonic()
    with pytest.raises(distributed.RankFailedError) as failed:
        distributed.spawn_ranks(sleep_or_raise, (1, str(tmp_path)), 2, grace_seconds=1, deadline_seconds=RANKS_DEADLINE)
    message = str(failed.value)
    assert "rank 1 of 2" in message and "ValueError: boom on rank 1" in message and "Traceback" in message
    assert time.monotonic() - started < RANKS_DEADLINE / 2  # ended by the failure, not by the deadline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started0", "started1"]


def test_ranks_past_the_deadline_are_killed(tmp_path) -> None:
    from rank_helpers import sleep_or_raise

    started = time.monotonic()
    with pytest.raises(distributed.RankTimeoutError, match="did not finish within 10 s"):
        distributed.spawn_ranks(sleep_or_raise, (None, str(tmp_path)), 2, deadline_seconds=10)
    assert time.monotonic() - started < 60
    alive = [p for p in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
    assert alive == []  # killed, not left behind


def test_a_busy_port_is_a_clear_error_before_any_rank_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        with pytest.raises(RuntimeError, match=f"cannot host the rendezvous on port {sock.getsockname()[1]}.*Fix"):
            distributed.host_store(sock.getsockname()[1], 2)


def test_a_rank_stopped_mid_write_leaves_no_half_written_file(tmp_path) -> None:
    """The surviving rank is inside an atomic write when its peer fails: spawn_ranks' SIGTERM
    becomes SystemExit in the rank, so the write's temp file is removed and no result appears."""
    from rank_helpers import write_slowly_or_raise

    with pytest.raises(distributed.RankFailedError, match="rank 1 of 2.*peer failed mid-write"):
        distributed.spawn_ranks(write_slowly_or_raise, (1, str(tmp_path)), 2, grace_seconds=1,
                                deadline_seconds=RANKS_DEADLINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writing"]  # no results.json, no .tmp
