"""benchmarks/quality.py helpers: user subsampling, row selection, budget accounting (no training)."""
import argparse
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]




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
    base = {"index": None, "item_embedding_file": None, "converge": False}
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
    assert labels == ["Pop", "SASRec", "TIGER (RQ-VAE IDs, tau 1.0)", "TIGER (LETTER IDs, tau 1.0)",
                      "TIGER (LETTER IDs, tau 0.7)"]
    converge = quality.build_rows("T", text, _args(converge=True))
    assert converge[-1][0] == "TIGER (LETTER IDs, tau 1.0, item-level input)"
    assert converge[-1][2]["encoder_input"] == "items" and converge[1][2] == {"learning_rate": 0.001}
    assert converge[0][2]["train_neg_sample_args"] is None  # Pop counts positives only

    bare = tmp_path / "B"
    _write_inter(bare, "B")
    with pytest.raises(FileNotFoundError, match="--index"):
        quality.build_rows("B", bare, _args())
    index = tmp_path / "B.index.json"
    index.write_text("{}")
    rows = quality.build_rows("B", bare, _args(index=str(index), item_embedding_file=str(index)))
    assert [r[0] for r in rows][:3] == ["Pop", "SASRec", "TIGER (RQ-VAE IDs on CF emb., tau 1.0)"]
    assert all(r[2]["item_tokenizer"] == str(index.resolve()) for r in rows[3:])
    assert {r[2]["tau"] for r in rows[3:]} == {1.0, 0.7}


def test_train_sequences_caps_generative_rows_only(quality, tmp_path):
    budget = tmp_path / "b.yaml"
    budget.write_text("train_batch_size: 10\ntrain_batches_per_epoch: 3\n")
    assert quality._train_sequences({"epochs": 2}, {}, [str(budget)], "TIGER", 1000) == 60
    assert quality._train_sequences({"epochs": 2}, {}, [str(budget)], "SASRec", 1000) == 2000
    assert quality._train_sequences({"epochs": 1}, {}, [str(budget)], "Pop", 1000) == 1000
    assert quality.table([{"label": "x", "test_result": {"ndcg@10": 0.5}}]).count("0.5000") == 1


def test_converge_curves_plot(quality, tmp_path):
    payload = {"setup": {"dataset": "D"}, "results": [
        {"label": "Pop", "model": "Pop", "best_valid_score": 0.02, "curve": [{"train_sequences": 10, "valid_ndcg@10": 0.02}]},
        {"label": "TIGER (LETTER IDs, tau 1.0)", "model": "TIGER",
         "curve": [{"train_sequences": 10, "valid_ndcg@10": 0.01}, {"train_sequences": 20, "valid_ndcg@10": 0.03}]},
    ]}
    path = quality.plot_curves(payload, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_row_processes_get_the_parent_arguments(quality, tmp_path, monkeypatch):
    """--jobs: each row process gets the same arguments, its own --rows/--out; records come back in row order."""
    calls = []

    class FakeProc:
        def __init__(self, cmd, stdout, stderr):
            calls.append(cmd)
            label = next(a for a in cmd if a.startswith("--rows="))[7:]
            out = Path(next(a for a in cmd if a.startswith("--out="))[6:])
            if label != "bad":
                out.write_text(json.dumps({"results": [{"label": label}]}))
            self.returncode = 0 if label != "bad" else 1

        def poll(self):
            return self.returncode

    monkeypatch.setattr(quality.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(quality.time, "sleep", lambda s: None)
    rows = [("a", "SASRec", {}), ("bad", "TIGER", {}), ("c", "Pop", {})]
    argv = ["--dataset=ml-100k", "--converge", "--jobs", "2", "--rows=x", "--epochs=3"]
    records = quality.run_rows_in_processes(rows, argv, tmp_path / "q.json", jobs=2)
    assert [r["label"] for r in records] == ["a", "bad", "c"]
    assert "error" in records[1] and "error" not in records[0]
    for cmd in calls:
        assert cmd[2:5] == ["--dataset=ml-100k", "--converge", "--epochs=3"]
        assert "2" not in cmd and "--rows=x" not in cmd


def test_rows_option_splits_labels_that_contain_commas(quality):
    assert quality.split_rows("Pop,SASRec") == {"Pop", "SASRec"}
    assert quality.split_rows("Pop,TIGER (LETTER IDs, tau 1.0)") == {"Pop", "TIGER (LETTER IDs, tau 1.0)"}
    assert quality.split_rows("TIGER (LETTER IDs, tau 0.7);SASRec") == {"TIGER (LETTER IDs, tau 0.7)", "SASRec"}


def test_stop_reason_tells_converged_from_capped_rows(quality, tmp_path):
    budget = tmp_path / "b.yaml"
    budget.write_text("epochs: 5\n")
    files = [str(budget)]
    assert quality.stop_reason({"epochs": 3}, {}, files, "TIGER") == "patience"
    assert quality.stop_reason({"epochs": 5}, {}, files, "TIGER") == "epoch cap"
    assert quality.stop_reason({"epochs": 5}, {"epochs": 8}, files, "SASRec") == "patience"
    assert quality.stop_reason({"epochs": 2, "stopped_by_callback": "time limit: x"}, {}, files, "TIGER") == "time limit: x"
    assert quality.stop_reason({"epochs": 1}, {}, files, "Pop") == "one pass"
    assert "| stopped |" in quality.table([{"label": "x", "stopped": "epoch cap"}])


def test_rows_refuses_to_mix_setups_instead_of_dropping_rows(quality, tmp_path, capsys):
    """--rows keeps an earlier JSON's other rows only under the same setup (wall-clock limits aside);
    otherwise it stops before running anything and the earlier file stays as it was."""
    assert quality._setup_differences({"a": 1, "time_limits": {"stop_by": "x"}}, {"a": 1, "time_limits": {}}) == []
    assert quality._setup_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
    out = tmp_path / "q.json"
    earlier = {"setup": {"dataset": "ml-100k", "budget": {"epochs": 999}}, "results": [{"label": "SASRec"}]}
    out.write_text(json.dumps(earlier))
    code = quality.main(["--dataset=ml-100k", "--rows=Pop", f"--out={out}", f"--checkpoint_dir={tmp_path / 'saved'}"])
    assert code == 2
    assert "setup differs" in capsys.readouterr().err
    assert json.loads(out.read_text()) == earlier
