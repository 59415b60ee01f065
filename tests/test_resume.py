"""A generative run killed after a checkpoint and resumed ends exactly like an uninterrupted one."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_letter.compat import load_trusted_checkpoint
from recbole_letter.quick_start import build_config
from recbole_letter.tokenization.semantic_ids import SemanticIDTable

from decoding import unique_table

TINY_TIGER = {
    "num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "num_heads": 2, "d_kv": 16, "d_ff": 64,
    "dropout_rate": 0.2,  # dropout masks come from the global RNG: resume must restore it
    "lr_scheduler": "cosine", "warmup_steps": 2,  # so must the schedule's position
    "epochs": 4, "stopping_step": 10, "train_batch_size": 32, "train_batches_per_epoch": 4,
    "MAX_ITEM_LIST_LENGTH": 5, "learning_rate": 0.01, "state": "ERROR", "show_progress": False,
}


class Killed(KeyboardInterrupt):
    """Stands in for Ctrl-C / SIGINT arriving after the epoch's checkpoint was written."""


def _trainer(root: Path, checkpoint_dir: Path):
    config, spec = build_config(
        "TIGER", "tiny", config_dict={**TINY_TIGER, "data_path": str(root), "checkpoint_dir": str(checkpoint_dir)}
    )
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(train._dataset.item_num - 1, 3, 8, seed=1))
    init_seed(config["seed"], config["reproducibility"])
    model = spec.model_class(config, train._dataset).to(config["device"])
    return spec.trainer_class(config, model), train, valid, test


def test_killed_and_resumed_run_matches_uninterrupted(tiny_seq_dataset, workdir: Path) -> None:
    root = tiny_seq_dataset("tiny", n_users=40, n_items=25)

    trainer, train, valid, test = _trainer(root, workdir / "full")
    _, full_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    full_losses = dict(trainer.train_loss_dict)
    full_last = trainer.evaluate(test, load_best_model=False)  # the final weights
    full_test = trainer.evaluate(test, load_best_model=True)

    trainer, train, valid, test = _trainer(root, workdir / "killed")

    def kill_after_epoch_1(epoch_idx: int, _score: float) -> None:
        if epoch_idx == 1:
            raise Killed

    with pytest.raises(Killed):
        trainer.fit(train, valid, saved=True, show_progress=False, callback_fn=kill_after_epoch_1)
    checkpoint_file = trainer.saved_model_file
    checkpoint = load_trusted_checkpoint(checkpoint_file)
    assert checkpoint["lr_scheduler"]["last_epoch"] > 0 and "rng_state" in checkpoint
    assert checkpoint["train_loader_generator"] is not None

    # a fresh process would build everything again from the same command, then resume
    torch.manual_seed(12345)  # whatever state the new process is in must not matter
    trainer, train, valid, test = _trainer(root, workdir / "killed")
    trainer.resume_checkpoint(checkpoint_file)
    assert trainer.start_epoch == checkpoint["epoch"] + 1 >= 1
    _, resumed_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    resumed_last = trainer.evaluate(test, load_best_model=False)
    resumed_test = trainer.evaluate(test, load_best_model=True)

    # every epoch after the checkpoint saw the same batches, dropout masks and learning rates
    resumed_epochs = sorted(trainer.train_loss_dict)
    assert resumed_epochs == list(range(checkpoint["epoch"] + 1, TINY_TIGER["epochs"]))
    assert {e: trainer.train_loss_dict[e] for e in resumed_epochs} == {e: full_losses[e] for e in resumed_epochs}
    assert resumed_last == full_last
    assert resumed_test == full_test
    assert resumed_valid == full_valid
    assert any(v > 0 for v in full_test.values())  # it learned something, so equality is not trivial


def test_checkpoint_write_is_atomic(tiny_seq_dataset, workdir: Path, monkeypatch) -> None:
    """A failure while writing a checkpoint leaves the previous file intact and no temp file."""
    root = tiny_seq_dataset("tiny", n_users=40, n_items=25)
    trainer, train, valid, _ = _trainer(root, workdir / "ckpt")
    trainer._save_checkpoint(0)
    before = Path(trainer.saved_model_file).read_bytes()

    def exploding_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(1)
    assert Path(trainer.saved_model_file).read_bytes() == before
    assert [p.name for p in (workdir / "ckpt").iterdir()] == [Path(trainer.saved_model_file).name]


def test_runs_started_in_the_same_second_keep_their_own_checkpoints(tiny_seq_dataset, workdir: Path) -> None:
    """RecBole names checkpoints ``<model>-<time to the second>.pth``: two runs of one model started
    together in one checkpoint_dir (quality.py --jobs) wrote one file, and each was tested on the
    weights saved last. Each trainer now claims its own file at its first save."""
    root = tiny_seq_dataset("tiny", n_users=40, n_items=25)
    first, *_ = _trainer(root, workdir / "ckpt")
    second, *_ = _trainer(root, workdir / "ckpt")
    second.saved_model_file = first.saved_model_file  # what RecBole gives two runs in one second
    with torch.no_grad():
        for param in second.model.parameters():
            param.add_(1.0)
    first._save_checkpoint(0)
    second._save_checkpoint(0)
    first._save_checkpoint(1)  # a later best of the first run goes to the first run's file

    assert first.saved_model_file != second.saved_model_file
    assert sorted(p.name for p in (workdir / "ckpt").iterdir()) == sorted(
        Path(t.saved_model_file).name for t in (first, second)
    )
    for trainer in (first, second):
        saved = load_trusted_checkpoint(trainer.saved_model_file)["state_dict"]
        assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())
