"""Same command, same seed, same numbers: whether stages come from the cache must not matter."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_letter import cli
from recbole_letter.seeding import isolated_rng, seed_from
from recbole_letter.stages.stage_cache import StageCache, stage_key


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_isolated_rng_restores_every_global_stream() -> None:
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = _draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with isolated_rng(seed=5):
        inside = _draws()
        torch.manual_seed(99)  # even reseeding inside must not leak out
    assert _draws() == expected
    with isolated_rng(seed=5):
        assert _draws() == inside  # seeded: deterministic whatever ran before


def test_isolated_rng_restores_on_error() -> None:
    torch.manual_seed(3)
    expected = float(torch.rand(1))
    torch.manual_seed(3)
    with pytest.raises(RuntimeError):
        with isolated_rng(seed=1):
            torch.rand(100)
            raise RuntimeError("stage failed")
    assert float(torch.rand(1)) == expected


def test_stage_miss_leaves_caller_random_state_as_a_hit_does(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = stage_key("demo", [], {"x": 1})
    seen = []

    def compute(out: Path) -> None:
        seen.append(float(torch.rand(1)))  # a stage drawing from the global stream
        (out / "v.txt").write_text("1")

    after = []
    for _ in range(2):  # miss, then hit
        torch.manual_seed(0)
        cache.get_or_compute("demo", key, compute)
        after.append(float(torch.rand(1)))
    assert after[0] == after[1]
    # the stage's own draws come from a stream seeded by its key, not from the caller's
    with isolated_rng(seed_from(key.digest)):
        assert seen == [float(torch.rand(1))]


def _tiger_args(work: Path) -> list[str]:
    return [
        "--model=TIGER", "--dataset=tiny", f"--data_path={work / 'data'}", f"--checkpoint_dir={work / 'saved'}",
        f"--item_embedding_file={work / 'emb.npy'}", "--tokenizer_epochs=2", "--codebook_size=8",
        "--num_levels=3", "--n_div_clusters=2", "--tokenizer_hidden_dims=[16]", "--code_dim=8",
        "--kmeans_iters=5", "--cf_epochs=1", "--cf_config={'embedding_size': 16}", "--epochs=1",
        "--num_encoder_layers=1", "--num_decoder_layers=1", "--d_model=32", "--num_heads=2", "--d_kv=16",
        "--d_ff=64", "--MAX_ITEM_LIST_LENGTH=5", "--train_batch_size=64", "--state=ERROR",
    ]


def test_tiger_metrics_identical_with_cold_and_warm_stage_cache(tiny_seq_dataset, workdir, capsys) -> None:
    """LightGCN (CF stage) and the tokenizer fit run only on the cold run; the T5's initial
    weights and every later draw must still be the same, so every metric is identical."""
    tiny_seq_dataset("tiny", n_users=50, n_items=30, min_len=6, max_len=10)
    np.save(workdir / "emb.npy", np.random.default_rng(0).standard_normal((31, 16)).astype(np.float32))
    results = []
    for run in ("cold", "warm"):
        assert cli.main(_tiger_args(workdir)) == 0
        out = capsys.readouterr().out
        path = Path(out.rsplit("results written to ", 1)[1].strip())
        results.append(json.loads(path.read_text())["results"][0])
        if run == "cold":
            stages = workdir / "saved" / "stages"
            assert (stages / "cf_embeddings").is_dir() and (stages / "tokenizer").is_dir()
    cold, warm = results
    assert cold["test_result"] and cold["test_result"] == warm["test_result"]
    assert cold["best_valid_result"] == warm["best_valid_result"]
