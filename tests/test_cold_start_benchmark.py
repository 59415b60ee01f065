"""benchmarks/cold_start.py helpers: holding items out, the reference floor, text metrics (no training)."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cold_start():
    # As when the script runs: Python puts its own folder (with benchmarks/common.py) on the path.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location("cold_start_benchmark", ROOT / "benchmarks" / "cold_start.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def test_held_out_items_keep_only_their_test_interactions(cold_start, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 100 * u + t) for u in range(40) for t, i in enumerate(rng.choice(30, 8, replace=False))]
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in reversed(rows)]
    (src / "D.inter").write_text("\n".join(lines) + "\n")
    (src / "D.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\tthing {i}\n" for i in range(30)))
    name, cold = cold_start.write_cold_dataset(src, "D", tmp_path / "out", max_users=30, cold_share=0.4, seed=1)
    inter = pd.read_csv(tmp_path / "out" / name / f"{name}.inter", sep="\t", dtype=str)
    assert (tmp_path / "out" / name / f"{name}.item").is_file()
    assert inter["user_id:token"].nunique() == 30 and cold
    inter["t"] = inter["timestamp:float"].astype(float)
    last = inter.sort_values("t").groupby("user_id:token").tail(1)
    held = inter[inter["item_id:token"].isin(cold)]
    assert len(held) and held.index.isin(last.index).all()  # a cold item is only ever a user's last item
    assert set(cold) <= set(last["item_id:token"])  # and each is some user's test target
    original = pd.DataFrame(rows, columns=["u", "i", "t"])
    users = set(inter["user_id:token"].astype(int))
    kept_warm = inter[~inter["item_id:token"].isin(cold)]
    warm_rows = original[original.u.isin(users) & ~original.i.astype(str).isin(cold)]
    assert len(kept_warm) == len(warm_rows)  # every warm interaction of the sampled users stays


def test_cold_first_reference_and_text_metrics(cold_start):
    ref = cold_start.cold_first_reference(4, ks=(2, 10))
    assert ref["recall@2"] == 0.5 and ref["recall@10"] == 1.0
    assert ref["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert cold_start.word_f1("The Matrix (1999)", "matrix, the") == pytest.approx(0.8)
    assert cold_start.word_f1("", "x") == 0.0
    assert cold_start.normalise("  Toy  Story (1995) ") == "toy story 1995"
