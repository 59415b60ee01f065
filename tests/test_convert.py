"""Tests for the atomic-file converter (recbole_letter.data.convert)."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_letter.data.convert import (
    ConversionSummary,
    clean_text,
    convert_amazon,
    convert_letter,
    kcore_filter,
    main,
)

INSTRUMENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Instruments"


def read_atomic(path: Path) -> pd.DataFrame:
    """Read an atomic file as RecBole does (pandas, tab, ``name:type`` header), all as text."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def user_sequences(inter: pd.DataFrame) -> dict[str, list[str]]:
    """Each user's items ordered by timestamp (as RecBole's TO ordering sees them)."""
    inter = inter.assign(ts=inter["timestamp"].astype(float))
    inter = inter.sort_values("ts", kind="stable")
    return {u: g["item_id"].tolist() for u, g in inter.groupby("user_id", sort=False)}


# ------------------------------------------------------------------------------------------
# LETTER JSON

LETTER_INTER = {
    "0": [0, 1, 2, 3, 4],
    "1": [5, 1, 6, 6, 7],  # consecutive repeat of 6 is kept
    "2": [2, 3, 8, 0],
    "3": [9, 4, 5, 1, 8, 2],
}
LETTER_ITEMS = {
    str(i): {
        "title": f"Guitar\tstring <b>set</b> {i}",
        "description": [f"Line one\nline two &amp; more {i}", 'a "quoted" word'],
        "categories": "Musical Instruments,Strings",
    }
    for i in range(10)
    if i != 7  # item 7 has no text
}
LETTER_ITEMS["3"]["brand"] = "D'Addario"
LETTER_ITEMS["42"] = {"title": "never interacted"}  # must not enter the .item file
LETTER_INDEX = {str(i): [f"<a_{i}>", f"<b_{i % 3}>"] for i in range(10)}


def make_letter_dir(root: Path, name: str = "Toy", index: dict | None = None) -> Path:
    src = root / name
    src.mkdir()
    (src / f"{name}.inter.json").write_text(json.dumps(LETTER_INTER))
    (src / f"{name}.item.json").write_text(json.dumps(LETTER_ITEMS))
    (src / f"{name}.index.json").write_text(json.dumps(LETTER_INDEX if index is None else index))
    return src


def test_letter_counts_order_and_item_text(tmp_path: Path) -> None:
    src = make_letter_dir(tmp_path)
    summary = convert_letter(src, "toyds", tmp_path / "out")

    assert isinstance(summary, ConversionSummary)
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (4, 10, 20)
    assert summary.consecutive_repeats == 1 and summary.repeated_pairs == 1
    assert summary.items_without_text == 1  # item 7
    assert summary.items_without_semantic_id == 0

    out_dir = tmp_path / "out" / "toyds"
    assert summary.inter_path == out_dir / "toyds.inter"
    assert summary.inter_path.read_text().splitlines()[0] == (
        "user_id:token\titem_id:token\ttimestamp:float"
    )
    inter = read_atomic(summary.inter_path)
    assert len(inter) == 20
    # Exact order per user, repeats kept, ids kept as the original string tokens.
    assert user_sequences(inter) == {u: [str(i) for i in s] for u, s in LETTER_INTER.items()}
    # Global strictly increasing counter: no ties anywhere.
    assert inter["timestamp"].astype(float).is_unique

    item = read_atomic(summary.item_path)
    header = summary.item_path.read_text().splitlines()[0]
    assert header == (
        "item_id:token\ttitle:token_seq\tdescription:token_seq\tbrand:token\tcategories:token_seq"
    )
    assert sorted(item["item_id"], key=int) == [str(i) for i in range(10)]
    row = item.set_index("item_id").loc["3"]
    assert row["title"] == "Guitar string set 3"
    assert row["description"] == "Line one line two & more 3 a ''quoted'' word"
    assert row["brand"] == "D'Addario"
    assert row["categories"] == "Musical_Instruments Strings"
    assert item.set_index("item_id").loc["7", "title"] == ""
    # Every line has exactly the header's number of fields (no stray tabs/newlines).
    lines = summary.item_path.read_text().splitlines()
    assert len(lines) == 11 and all(line.count("\t") == 4 for line in lines)

    assert summary.index_path.read_bytes() == (src / "Toy.index.json").read_bytes()


def test_letter_copies_lcrec_user_preferences(tmp_path: Path) -> None:
    src = make_letter_dir(tmp_path)
    prefs = {"user_explicit_preference": {"0": ["likes strings"]}, "user_vague_intention": {"train": {}, "test": {}}}
    (src / "Toy.user.json").write_text(json.dumps(prefs))
    summary = convert_letter(src, "toyds", tmp_path / "out")
    assert summary.user_path == tmp_path / "out" / "toyds" / "toyds.user.json"
    assert json.loads(summary.user_path.read_text()) == prefs
    assert "toyds.user.json" in summary.line()
    (src / "Toy.user.json").write_text(json.dumps({"0": "no wrapper"}))
    with pytest.raises(ValueError, match="user_explicit_preference"):
        convert_letter(src, "toyds2", tmp_path / "out")
    assert not (tmp_path / "out" / "toyds2").exists() or not any((tmp_path / "out" / "toyds2").iterdir())


def test_letter_name_option_and_missing_index_entries(tmp_path: Path) -> None:
    src = make_letter_dir(tmp_path, name="Files", index={"0": ["<a_1>"]})
    renamed = tmp_path / "elsewhere"
    src.rename(renamed)
    summary = convert_letter(renamed, "DS", tmp_path / "out", name="Files")
    assert summary.n_interactions == 20
    assert summary.items_without_semantic_id == 9
    assert "9 items without semantic id" in summary.line()


def test_letter_cli_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_letter_dir(tmp_path)
    code = main(["letter", str(src), "--dataset", "cli", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.strip()
    assert code == 0
    assert printed.startswith("cli: 4 users, 10 items, 20 interactions -> ")
    assert str(tmp_path / "out" / "cli" / "cli.inter") in printed
    assert "1 consecutive repeats" in printed


@pytest.mark.parametrize(
    "inter, message",
    [
        ([1, 2, 3], "expected a JSON object"),
        ({"0": 5}, "not a list"),
        ({"0": [1.5, 2]}, "items must be integers or strings"),
        ({"0": []}, "no interactions"),
        ({"0": ["a\tb"]}, "contains a tab"),
    ],
)
def test_letter_bad_inter_json(tmp_path: Path, inter: object, message: str) -> None:
    src = tmp_path / "Bad"
    src.mkdir()
    (src / "Bad.inter.json").write_text(json.dumps(inter))
    with pytest.raises(ValueError, match=message):
        convert_letter(src, "Bad", tmp_path / "out")
    assert not (tmp_path / "out" / "Bad" / "Bad.inter").exists()


def test_letter_bad_index_leaves_no_output(tmp_path: Path) -> None:
    src = make_letter_dir(tmp_path, index={"0": "<a_1><b_2>"})
    with pytest.raises(ValueError, match="non-empty list of code strings"):
        convert_letter(src, "toyds", tmp_path / "out")
    # The .inter was staged before the index was checked: nothing (not even temp files) remains.
    assert list((tmp_path / "out" / "toyds").iterdir()) == []


def test_letter_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="directory not found"):
        convert_letter(tmp_path / "nope", "x", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--letter-name"):
        convert_letter(tmp_path / "empty", "x", tmp_path / "out")
    code = main(["letter", str(tmp_path / "empty"), "--dataset", "x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("convert: error: ") and err.count("\n") == 1


def test_reserved_dataset_name(tmp_path: Path) -> None:
    src = make_letter_dir(tmp_path)
    with pytest.raises(ValueError, match="reserved by RecBole"):
        convert_letter(src, "ml-100k", tmp_path / "out")


# ------------------------------------------------------------------------------------------
# Amazon

def review(user: str, item: str, t: int, rating: float = 5.0) -> dict:
    return {"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": t,
            "reviewText": "ok"}


def cascade_reviews() -> list[dict]:
    """A 2-core case where filtering cascades over three rounds.

    Core: users u1,u2,u3 x items A,B (all 2+). Chain: user u4 has items A and C; item C also has
    user u5 who has only C. Round 1 drops u5 (1 review); then C has 1 user -> round 2 drops C;
    then u4 has only A -> round 3 drops u4.
    """
    rows = [
        review("u1", "A", 100), review("u1", "B", 200),
        review("u2", "B", 100), review("u2", "A", 200),
        review("u3", "A", 300), review("u3", "B", 300),  # same-second tie: file order kept
        review("u4", "A", 50), review("u4", "C", 60),
        review("u5", "C", 70),
    ]
    return rows


def test_kcore_cascades() -> None:
    frame = pd.DataFrame(
        [(r["reviewerID"], r["asin"]) for r in cascade_reviews()], columns=["user_id", "item_id"]
    )
    kept, rounds = kcore_filter(frame, 2)
    assert set(kept["user_id"]) == {"u1", "u2", "u3"}
    assert set(kept["item_id"]) == {"A", "B"}
    assert rounds == 3
    assert kcore_filter(frame, 1)[1] == 0


def test_kcore_result_is_a_core() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"user_id": rng.integers(0, 60, 600).astype(str), "item_id": rng.integers(0, 40, 600)}
    ).drop_duplicates()
    kept, _ = kcore_filter(frame, 5)
    assert len(kept) > 0
    assert kept["user_id"].value_counts().min() >= 5
    assert kept["item_id"].value_counts().min() >= 5
    # Rows are only ever dropped together with their whole user or item, so no dropped row can
    # join a surviving user to a surviving item.
    removed = frame.loc[frame.index.difference(kept.index)]
    joins_survivors = removed["user_id"].isin(kept["user_id"]) & removed["item_id"].isin(
        kept["item_id"]
    )
    assert not joins_survivors.any()


def write_lines(path: Path, records: list, gz: bool, literal: bool = False) -> None:
    text = "\n".join(repr(r) if literal else json.dumps(r) for r in records) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_amazon_2014_gzip_literal_meta(tmp_path: Path) -> None:
    rows = cascade_reviews() + [review("u1", "A", 400)]  # later duplicate of (u1, A): dropped
    reviews = tmp_path / "reviews_Toy.json.gz"
    write_lines(reviews, rows, gz=True)
    meta = tmp_path / "meta_Toy.data"  # gzip without a .gz extension: detected by magic bytes
    write_lines(
        meta,
        [
            {"asin": "A", "title": "Amp <i>deluxe</i>", "description": "Loud &amp; clear.\r\nTwo",
             "brand": "Fender", "categories": [["Musical Instruments", "Amps"], ["Amps"]],
             "related": {"also_bought": ["B"]}},
            {"asin": "C", "title": "filtered out"},
            {"asin": "Z", "title": "unrelated", "price": 1.0},
        ],
        gz=True,
        literal=True,
    )
    summary = convert_amazon(reviews, meta, "Toy14", tmp_path / "out", kcore=2)
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (3, 2, 6)
    assert summary.duplicates_removed == 1
    assert summary.kcore_rounds == 3 and summary.kcore_removed == 3
    assert summary.items_without_text == 1  # B has no metadata

    text = summary.inter_path.read_text().splitlines()
    assert text[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    inter = read_atomic(summary.inter_path)
    assert user_sequences(inter) == {"u1": ["A", "B"], "u2": ["B", "A"], "u3": ["A", "B"]}
    # Earliest (u1, A) kept; the u3 same-second tie is broken by file order, floor = real time.
    ts = inter.set_index(["user_id", "item_id"])["timestamp"].astype(float)
    assert ts[("u1", "A")] == 100.0
    assert ts[("u3", "A")] == 300.0 and 300.0 < ts[("u3", "B")] < 301.0

    item = read_atomic(summary.item_path).set_index("item_id")
    assert sorted(item.index) == ["A", "B"]
    assert item.loc["A", "title"] == "Amp deluxe"
    assert item.loc["A", "description"] == "Loud & clear. Two"
    assert item.loc["A", "categories"] == "Musical_Instruments Amps"
    assert (item.loc["B"] == "").all()


def test_amazon_2018_plain_min_rating(tmp_path: Path) -> None:
    rows = [review(u, i, 1000 + 10 * n, 5.0) for n, (u, i) in enumerate(
        [(u, i) for u in ("x", "y", "z") for i in ("P", "Q", "R")]
    )]
    rows.append(review("x", "S", 5, 1.0))  # dropped by min_rating
    reviews = tmp_path / "Toy.json"
    write_lines(reviews, rows, gz=False)
    meta = tmp_path / "meta_Toy.json"
    write_lines(
        meta,
        [
            {"asin": i, "title": f"Item {i}", "description": [f"<p>First {i}</p>", "Second"],
             "brand": "Yamaha", "category": ["Musical Instruments", "Drums & Percussion"]}
            for i in ("P", "Q", "R")
        ],
        gz=False,
    )
    summary = convert_amazon(reviews, meta, "Toy18", tmp_path / "out", kcore=3, min_rating=4.0)
    assert summary.below_min_rating == 1
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (3, 3, 9)
    assert summary.items_without_text == 0
    item = read_atomic(summary.item_path).set_index("item_id")
    assert item.loc["Q", "description"] == "First Q Second"
    assert item.loc["R", "categories"] == "Musical_Instruments Drums_&_Percussion"
    assert item.loc["P", "brand"] == "Yamaha"


def test_amazon_bad_inputs(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    write_lines(good, cascade_reviews(), gz=False)

    with pytest.raises(FileNotFoundError, match="file not found"):
        convert_amazon(tmp_path / "missing.json", None, "T", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--meta"):
        convert_amazon(good, tmp_path / "missing_meta.json", "T", tmp_path / "out")

    no_asin = tmp_path / "no_asin.json"
    write_lines(no_asin, [{"reviewerID": "u", "unixReviewTime": 1}], gz=False)
    with pytest.raises(ValueError, match=r"no_asin.json:1: review has no 'asin'"):
        convert_amazon(no_asin, None, "T", tmp_path / "out")

    garbage = tmp_path / "garbage.json"
    garbage.write_text("user,item\nu,i\n")
    with pytest.raises(ValueError, match="neither JSON nor a Python dict literal"):
        convert_amazon(garbage, None, "T", tmp_path / "out")

    with pytest.raises(ValueError, match="nothing left after 5-core"):
        convert_amazon(good, None, "T", tmp_path / "out", kcore=5)

    unrelated_meta = tmp_path / "meta.json"
    write_lines(unrelated_meta, [{"asin": "Z", "title": "t"}], gz=False)
    with pytest.raises(ValueError, match="none of the 2 kept items"):
        convert_amazon(good, unrelated_meta, "T", tmp_path / "out", kcore=2)
    assert not (tmp_path / "out" / "T").exists() or not any((tmp_path / "out" / "T").iterdir())


def test_amazon_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reviews = tmp_path / "r.json"
    write_lines(reviews, cascade_reviews(), gz=False)
    code = main(["amazon", "--reviews", str(reviews), "--dataset", "A", "--out",
                 str(tmp_path / "out"), "--kcore", "2"])
    assert code == 0
    assert capsys.readouterr().out.startswith("A: 3 users, 2 items, 6 interactions -> ")
    assert (tmp_path / "out" / "A" / "A.inter").is_file()
    assert not (tmp_path / "out" / "A" / "A.item").exists()  # no --meta, no .item


def test_clean_text() -> None:
    assert clean_text("a\tb\r\nc  d") == "a b c d"
    assert clean_text("x &lt;br&gt; y<br/>z") == "x y z"
    assert clean_text('12" cable') == "12'' cable"
    assert clean_text(["<li>one</li>", "two"]) == "one two"
    assert clean_text(None) == ""


# ------------------------------------------------------------------------------------------
# RecBole itself parses the output and its LS split matches the paper's leave-one-out


def test_recbole_loads_letter_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recbole_letter  # noqa: F401  (restores numpy aliases once compat.py exists)

    for alias, value in (("float_", np.float64), ("complex_", np.complex128),
                         ("unicode_", np.str_)):
        if alias not in np.__dict__:
            monkeypatch.setattr(np, alias, value, raising=False)
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.chdir(tmp_path)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    src = make_letter_dir(tmp_path)
    out = tmp_path / "out"
    convert_letter(src, "toyds", out)
    config = Config(
        model="SASRec",
        dataset="toyds",
        config_dict={
            "data_path": str(out),
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO",
                          "group_by": "user", "mode": "full"},
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "epochs": 1,
            "checkpoint_dir": str(tmp_path / "saved"),
            "show_progress": False,
            # RecBole's sample.yaml (used for non-bundled datasets) loads only user/item ids,
            # which would make the TO ordering fail: load the timestamp and all item text.
            "load_col": {
                "inter": ["user_id", "item_id", "timestamp"],
                "item": ["item_id", "title", "description", "brand", "categories"],
            },
        },
    )
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 4 and dataset.item_num - 1 == 10 and dataset.inter_num == 20
    item_feat = dataset.item_feat
    assert len(item_feat) == dataset.item_num  # one row per item (+ padding row 0)
    assert {"title", "description", "brand", "categories"} <= set(item_feat.columns)
    title_of = dict(zip(dataset.id2token("item_id", item_feat["item_id"].to_numpy()).tolist(),
                        item_feat["title"]))
    words = dataset.id2token("title", np.asarray(title_of["3"], dtype=np.int64)).tolist()
    assert words == ["Guitar", "string", "set", "3"]

    _, valid_data, test_data = data_preparation(config, dataset)

    def targets(loader) -> dict[str, str]:
        feat = loader._dataset.inter_feat
        users = dataset.id2token("user_id", feat["user_id"].numpy())
        items = dataset.id2token("item_id", feat["item_id"].numpy())
        return dict(zip(users.tolist(), items.tolist()))

    assert targets(test_data) == {u: str(s[-1]) for u, s in LETTER_INTER.items()}
    assert targets(valid_data) == {u: str(s[-2]) for u, s in LETTER_INTER.items()}


# ------------------------------------------------------------------------------------------
# The real LETTER Instruments files (only where ../shared/data is next to the repo)


@pytest.mark.skipif(not INSTRUMENTS.is_dir(), reason="shared/data/Instruments not available")
def test_instruments_real_data(tmp_path: Path) -> None:
    summary = convert_letter(INSTRUMENTS, "Instruments", tmp_path)
    assert (summary.n_users, summary.n_items, summary.n_interactions) == (24772, 9922, 206153)
    assert summary.item_path is None  # no Instruments.item.json in the snapshot
    assert summary.items_without_semantic_id == 0

    raw = json.loads((INSTRUMENTS / "Instruments.inter.json").read_text())
    inter = read_atomic(summary.inter_path)
    inter = inter.iloc[np.argsort(inter["timestamp"].astype(float).to_numpy(), kind="stable")]
    # In time order the rows are exactly the users' lists back to back, i.e. each user's order
    # is kept and no two users' interactions interleave.
    expected_users = np.repeat(list(raw), [len(s) for s in raw.values()])
    expected_items = [str(i) for s in raw.values() for i in s]
    assert (inter["user_id"].to_numpy() == expected_users).all()
    assert inter["item_id"].tolist() == expected_items
    assert json.loads(summary.index_path.read_text()) == json.loads(
        (INSTRUMENTS / "Instruments.index.json").read_text()
    )
