"""benchmarks/quality.py helpers: user subsampling, row selection, budget accounting (no training)."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    # As when the script runs: Python puts its own folder (with benchmarks/common.py) on the path.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _write_inter(folder: Path, name: str, n_users: int = 10, per_user: int = 6) -> None:
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 0
    for u in range(n_users):
        for k in range(per_user):
            lines.append(f"{u}\t{(u + k) % 7}\t{t}")
            t += 1
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def _args(**kw):
    base = {"index": None, "item_embedding_file": None}
    return argparse.Namespace(**{**base, **kw})


def test_subsample_keeps_whole_sequences_and_side_files(quality, tmp_path):
    src = tmp_path / "src" / "D"
    _write_inter(src, "D")
    (src / "D.index.json").write_text(json.dumps({"0": ["<a_0>"]}))
    out = quality.subsample_users(src, "D", 4, seed=1, out_root=tmp_path / "sub")
    import pandas as pd

    frame = pd.read_csv(out / "D.inter", sep="\t", dtype=str)
    assert frame["user_id:token"].nunique() == 4
    assert (frame.groupby("user_id:token").size() == 6).all()
    assert (out / "D.index.json").is_file()
    assert quality.subsample_users(src, "D", 4, seed=1, out_root=tmp_path / "sub") == out  # reused
    with pytest.raises(ValueError):
        quality.subsample_users(src, "D", 10, seed=1, out_root=tmp_path / "sub2")
    assert quality.approx_train_rows(out, "D") == 4 * 3


def test_rows_with_text_and_with_published_index(quality, tmp_path):
    text = tmp_path / "T"
    _write_inter(text, "T")
    (text / "T.item").write_text("item_id:token\ttitle:token_seq\n0\ta\n")
    labels = [r[0] for r in quality.build_rows("T", text, _args())]
    assert labels == ["SASRec", "TIGER", "LETTER-TIGER", "LETTER-TIGER t0.7"]

    bare = tmp_path / "B"
    _write_inter(bare, "B")
    with pytest.raises(FileNotFoundError, match="--index"):
        quality.build_rows("B", bare, _args())
    index = tmp_path / "B.index.json"
    index.write_text("{}")
    rows = quality.build_rows("B", bare, _args(index=str(index), item_embedding_file=str(index)))
    assert [r[0] for r in rows][1] == "TIGER (RQVAE on CF emb.)"
    assert all(r[2]["item_tokenizer"] == str(index.resolve()) for r in rows[2:])
    assert {r[2]["tau"] for r in rows[2:]} == {1.0, 0.7}


def test_train_sequences_caps_generative_rows_only(quality, tmp_path):
    budget = tmp_path / "b.yaml"
    budget.write_text("train_batch_size: 10\ntrain_batches_per_epoch: 3\n")
    assert quality._train_sequences({"epochs": 2}, {}, [str(budget)], "TIGER", 1000) == 60
    assert quality._train_sequences({"epochs": 2}, {}, [str(budget)], "SASRec", 1000) == 2000
    assert quality.table([{"label": "x", "test_result": {"ndcg@10": 0.5}}]).count("0.5000") == 1
