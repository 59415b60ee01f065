"""benchmarks/cold_start.py helpers: holding items out, the reference floor, text metrics (no training)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]




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


def test_model_files_and_markdown_report(cold_start, tmp_path):
    extra = tmp_path / "tiger.yaml"
    extra.write_text("epochs: 3  # (int) x\n")
    assert cold_start.parse_model_files([f"TIGER={extra}"]) == {"TIGER": [str(extra)]}
    for bad in (f"TIGR={extra}", "TIGER=/no/such.yaml", str(extra)):
        with pytest.raises(SystemExit, match="expected MODEL=<existing YAML>"):
            cold_start.parse_model_files([bad])
    metrics = {m: 0.5 for m in cold_start.METRICS}
    payload = {
        "dataset": "D-cold", "source": "D", "n_cold_items": 4, "n_test_cold": 3, "n_test_warm": 7,
        "llm_path": "tiny-random", "budget_files": ["b.yaml"], "model_files": {"TIGER": ["t.yaml"]},
        "overrides": {}, "semantic_ids": "table", "cpu_seconds": {"total": 1.0},
        "results": {"STORE, a": {"cold": metrics, "warm": metrics, "all": metrics, "cold_share_top10": 0.25}},
        "cold_first_reference": cold_start.cold_first_reference(4),
        "text_token_skills": {"text2token_warm_exact": 0.125},
        "reconstruction": {"warm": {"exact_title": 0.0, "word_f1": 0.75, "n": 2}},
    }
    report = cold_start.markdown_report(payload)
    rows = [line for line in report.splitlines() if line.startswith("| STORE, a") or line.startswith("| reference")]
    assert len(rows) == 2 and rows[0].count("0.5000") == 3 * len(cold_start.METRICS) and "0.2500" in rows[0]
    assert "TIGER also `t.yaml`" in report and "| text2token_warm_exact | 0.1250 |" in report
    assert "| warm | 0.0000 | 0.7500 | 2 |" in report


def test_whole_script_runs_on_a_tiny_catalogue(cold_start, tmp_path, monkeypatch):
    """The benchmark end to end (tiny-random LLM, 1 epoch of 2 batches): every row and check is
    written, the held-out items really had no code, and the markdown matches the JSON."""
    import json
    import sys

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import test_store  # its catalogue: items whose titles name their codes

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    known, _ = test_store.split_codes(40, 0)
    root = test_store.write_catalogue(tmp_path / "data", known, n_users=40)
    out = tmp_path / "cold.json"
    code = cold_start.main([
        f"--dataset={test_store.DATASET}", "--max_users=0", "--cold_share=0.3", f"--checkpoint_dir={tmp_path / 'saved'}",
        f"--out={out}", "--text_samples=5", f"--data_path={root}", "--epochs=1", "--train_batches_per_epoch=2",
        "--train_batch_size=8", "--num_levels=2", "--codebook_size=16", "--code_dim=8", "--tokenizer_hidden_dims=[32]",
        "--tokenizer_epochs=100", "--MAX_ITEM_LIST_LENGTH=3", "--eval_batch_size=64", "--decode_batch_size=64",
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {f"{m}, {c}" for m in ("STORE", "LCRec", "TIGER")
                                      for c in ("a: STORE text->token", "b: quantiser")} | {"Pop"}
    assert result["n_cold_items"] > 0 and result["n_test_cold"] > 0
    assert f"unassigned={result['n_cold_items']}" in result["semantic_ids"]
    for row in result["results"].values():
        assert {"cold", "warm", "all"} <= set(row) and 0 <= row["cold_share_top10"] <= 1
    assert result["results"]["Pop"]["cold"]["recall@10"] == 0  # Pop never ranks an item it never saw
    assert set(result["reconstruction"]) == {"warm", "cold (a)", "cold (b)"}
    assert out.with_suffix(".md").read_text() == cold_start.markdown_report(result)
