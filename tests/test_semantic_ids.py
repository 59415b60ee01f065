"""Tests for semantic-ID tables (uniqueness, cold start, index JSON) and the tokenizer report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_letter.tokenization import report as report_mod
from recbole_letter.tokenization.report import (
    cf_neighbour_agreement,
    format_report,
    gini,
    normalised_entropy,
    plot_code_usage,
    tokenizer_report,
)
from recbole_letter.tokenization.semantic_ids import (
    SemanticIDTable,
    assign_new_items,
    count_collisions,
    export_index_json,
    load_index_json,
    make_unique,
)

torch.set_num_threads(1)

INSTRUMENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Instruments"
PROPS = settings(max_examples=60, deadline=None)


def _distinct_rows(codes: np.ndarray) -> bool:
    return np.unique(codes, axis=0).shape[0] == codes.shape[0]


@st.composite
def crowded_tables(draw, with_distances: bool = False):
    """Small tables over tiny codebooks, so identical rows and full prefixes are common."""
    n = draw(st.integers(1, 40))
    n_levels = draw(st.integers(1, 3))
    size = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, size, size=(n, n_levels)).astype(np.int64)
    dist = rng.random((n, size)) if with_distances else None
    return codes, dist, size


# --------------------------------------------------------------------------- count_collisions
def test_count_collisions_hand_computed():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 1], [1, 0], [1, 0]])
    stats = count_collisions(codes)
    # tuples (0,1) x3, (1,0) x2, (1,1) x1 -> 3 distinct, 5 items share a tuple
    assert stats["distinct"] == 3
    assert stats["colliding_items"] == 5
    assert stats["colliding_groups"] == 2
    assert stats["max_group_size"] == 3
    assert stats["collision_rate"] == pytest.approx(1 - 3 / 6)


def test_count_collisions_rejects_padding_row():
    with pytest.raises(ValueError, match="padding row"):
        count_collisions(np.array([[-1, -1], [0, 1]]))


# --------------------------------------------------------------------------- make_unique
@PROPS
@given(crowded_tables())
def test_make_unique_without_distances_adds_extra_level_only_when_needed(table):
    codes, _, _ = table
    out, info = make_unique(codes)
    assert _distinct_rows(out)
    base_unique = count_collisions(codes)["colliding_items"] == 0
    assert info["extra_level_added"] is (not base_unique)
    assert out.shape[1] == codes.shape[1] + (0 if base_unique else 1)
    # Without distances no base code may change: the extra level is the only disambiguator.
    np.testing.assert_array_equal(out[:, : codes.shape[1]], codes)
    if info["extra_level_added"]:
        # Each group of k identical tuples gets extra codes 0..k-1; k-1 of them are nonzero.
        assert info["extra_level_items"] == info["collisions_before"] - (
            info["distinct_before"] - (codes.shape[0] - info["collisions_before"])
        )
        assert info["extra_level_size"] == count_collisions(codes)["max_group_size"]


@PROPS
@given(crowded_tables(with_distances=True))
def test_make_unique_with_distances_keeps_prefix_and_is_unique(table):
    codes, dist, size = table
    out, info = make_unique(codes, dist, [size] * codes.shape[1])
    assert _distinct_rows(out)
    # Only the last base level may move; coarser levels carry the semantics and stay fixed.
    np.testing.assert_array_equal(out[:, : codes.shape[1] - 1], codes[:, :-1])
    moved = out[:, codes.shape[1] - 1] != codes[:, -1]
    assert moved.sum() == info["reassigned_items"]
    # A moved item takes a code no original item of its prefix used.
    for i in np.flatnonzero(moved):
        same_prefix = (codes[:, :-1] == codes[i, :-1]).all(axis=1)
        assert out[i, codes.shape[1] - 1] not in codes[same_prefix, -1]
    # An extra level appears only if some prefix ran out of free last-level codes.
    assert info["extra_level_added"] is (info["collisions_after_step1"] > 0)


@PROPS
@given(crowded_tables(with_distances=True))
def test_make_unique_returns_unique_tables_unchanged(table):
    codes, dist, _ = table
    keep = np.sort(np.unique(codes, axis=0, return_index=True)[1])
    unique_codes, unique_dist = codes[keep], dist[keep]
    for out, info in (make_unique(unique_codes), make_unique(unique_codes, unique_dist)):
        np.testing.assert_array_equal(out, unique_codes)
        assert info["collisions_before"] == 0 and not info["extra_level_added"]


@PROPS
@given(crowded_tables(with_distances=True))
def test_make_unique_is_deterministic_and_does_not_mutate(table):
    codes, dist, _ = table
    codes_copy = codes.copy()
    out1, info1 = make_unique(codes, dist)
    out2, info2 = make_unique(codes, dist)
    np.testing.assert_array_equal(out1, out2)
    assert info1 == info2
    np.testing.assert_array_equal(codes, codes_copy)


def test_make_unique_greedy_by_distance_hand_example():
    codes = np.array([[0, 1], [0, 1], [0, 1], [0, 0]])
    dist = np.array(
        [
            [0.9, 0.5, 0.2, 0.3],  # item 0: second closest to contested code 1
            [0.9, 0.1, 0.9, 0.9],  # item 1: closest to code 1 -> keeps it
            [0.9, 0.9, 0.1, 0.8],  # item 2: closest free pair overall (code 2, 0.1)
            [0.0, 0.9, 0.9, 0.9],
        ]
    )
    out, info = make_unique(codes, dist, [2, 4])
    # Greedy over (item, free code) pairs: item 2 -> 2 (0.1) first, then item 0 -> 3 (0.3),
    # although item 0 alone would have preferred code 2.
    np.testing.assert_array_equal(out, [[0, 3], [0, 1], [0, 2], [0, 0]])
    assert info["reassigned_items"] == 2 and not info["extra_level_added"]


def test_make_unique_full_prefix_falls_back_to_extra_level():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0]])
    dist = np.array([[0.5, 0.1], [0.2, 0.3], [0.1, 0.1], [0.3, 0.9], [0.1, 0.2]])
    out, info = make_unique(codes, dist)
    # prefix 0 is full (codes 0 and 1 used) -> extra level; prefix 1: item 3 moves to free code 1
    # since item 4 is closer to the contested code 0.
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]])
    assert info["collisions_after_step1"] == 2 and info["extra_level_items"] == 1
    with pytest.raises(ValueError, match="max_extra_levels=0"):
        make_unique(codes, dist, max_extra_levels=0)


def test_make_unique_validates_inputs():
    codes = np.array([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="shape"):
        make_unique(codes, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no column"):
        make_unique(codes, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="NaN"):
        make_unique(codes, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="codebook size"):
        make_unique(codes, codebook_sizes=[1, 1])
    with pytest.raises(TypeError, match="integers"):
        make_unique(codes.astype(float))


# --------------------------------------------------------------------------- assign_new_items
@PROPS
@given(crowded_tables(with_distances=True), st.integers(1, 15), st.booleans())
def test_assign_new_items_keeps_existing_and_is_unique(table, n_new, use_distances):
    codes, _, size = table
    existing, _ = make_unique(codes)
    if existing.shape[1] == codes.shape[1]:  # force an extra level so every case is solvable
        existing = np.concatenate([existing, np.zeros((len(existing), 1), np.int64)], axis=1)
    rng = np.random.default_rng(n_new)
    new = rng.integers(0, size, size=(n_new, codes.shape[1]))
    dist = rng.random((n_new, size)) if use_distances else None
    before = existing.copy()
    out = assign_new_items(existing, new, dist, extra_level_size=10_000)
    np.testing.assert_array_equal(existing, before)
    assert out.shape == (n_new, existing.shape[1])
    assert _distinct_rows(np.concatenate([existing, out]))
    # prefixes (all base levels but the last) never change
    np.testing.assert_array_equal(out[:, : codes.shape[1] - 1], new[:, :-1])


def test_assign_new_items_smallest_unused_extra_value():
    existing = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [2, 1, 0], [3, 3, 0], [3, 3, 2]])
    new = np.array([[0, 0], [1, 0], [2, 2], [1, 0], [3, 3]])
    out = assign_new_items(existing, new, None)
    # (0,0) uses {0,1} -> 2; (1,0) uses {0} -> 1 then 2; (2,2) is free -> 0; (3,3) fills gap 1
    np.testing.assert_array_equal(out, [[0, 0, 2], [1, 0, 1], [2, 2, 0], [1, 0, 2], [3, 3, 1]])
    with pytest.raises(ValueError, match="extra level has only 3 codes"):
        assign_new_items(existing, np.array([[0, 0], [0, 0]]), None)
    wider = assign_new_items(existing, np.array([[0, 0], [0, 0]]), None, extra_level_size=4)
    np.testing.assert_array_equal(wider, [[0, 0, 2], [0, 0, 3]])


def test_assign_new_items_without_extra_level():
    existing = np.array([[0, 0], [0, 1], [1, 0]])
    new = np.array([[0, 0], [1, 0], [1, 0]])
    with pytest.raises(ValueError, match="no extra level.*distances_new"):
        assign_new_items(existing, new, None)
    dist = np.array([[0.1, 0.2, 0.3], [0.5, 0.1, 0.2], [0.1, 0.9, 0.3]])
    out = assign_new_items(existing, new, dist)
    # existing items keep their codes; the new items move to the nearest free code of the prefix:
    # prefix 0 -> code 2; prefix 1 -> item 1 takes 1 (0.1), item 2 takes 2 (0.3)
    np.testing.assert_array_equal(out, [[0, 2], [1, 1], [1, 2]])
    full = np.array([[0, 0], [0, 1]])
    with pytest.raises(ValueError, match="no free last-level code"):
        assign_new_items(full, np.array([[0, 1]]), np.array([[0.1, 0.2]]))
    with pytest.raises(ValueError, match="make_unique"):
        assign_new_items(np.array([[0, 0], [0, 0]]), new, None)


# --------------------------------------------------------------------------- index JSON
def test_export_import_round_trip(tmp_path):
    codes = np.array([[12, 3, 200, 7], [0, 0, 0, 0], [255, 1, 2, 3]])
    tokens = ["item_a", "42", "x y"]
    path = export_index_json(codes, tokens, tmp_path / "sub" / "ds.index.json")
    raw = json.loads(path.read_text())
    assert raw == {
        "item_a": ["<a_12>", "<b_3>", "<c_200>", "<d_7>"],
        "42": ["<a_0>", "<b_0>", "<c_0>", "<d_0>"],
        "x y": ["<a_255>", "<b_1>", "<c_2>", "<d_3>"],
    }
    assert [p.name for p in path.parent.iterdir()] == ["ds.index.json"]  # no temp file left
    # our dataset lists the items in another order and lacks one: rows follow our order
    loaded, info = load_index_json(path, ["x y", "item_a"])
    np.testing.assert_array_equal(loaded, codes[[2, 0]])
    assert loaded.dtype == np.int64
    assert info["ignored_items"] == 1 and info["ignored_examples"] == ["42"]
    assert info["n_levels"] == 4 and info["colliding_items"] == 0


def _write(tmp_path: Path, obj) -> Path:
    path = tmp_path / "bad.index.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("{not json", "not valid JSON"),
        (["<a_1>"], "JSON object"),
        ({}, "JSON object"),
        ({"1": "<a_1>"}, "not a non-empty list"),
        ({"1": ["<a_1>", "<b_1>"], "2": ["<a_1>"]}, "has 1 code tokens but '1' has 2"),
        ({"1": ["<a_1>", "<b-1>"]}, "malformed code token '<b-1>'"),
        ({"1": ["<a_1>", "b_1"]}, "malformed code token 'b_1'"),
        ({"1": ["<A_1>"]}, "malformed code token"),
        ({"1": ["<a_1>\n<b_2>"]}, "malformed code token"),
        ({"1": [1, 2]}, "must be strings"),
        ({"1": ["<a_1>", "<c_1>"]}, "letter 'c' at position 2"),
        ({"1": ["<b_1>", "<a_1>"]}, "letter 'b' at position 1"),
    ],
)
def test_load_index_json_rejects_malformed_files(tmp_path, content, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_index_json(_write(tmp_path, content), ["1"])


def test_load_index_json_missing_file_and_items(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_index_json(tmp_path / "nope.json", ["1"])
    path = _write(tmp_path, {"1": ["<a_1>"], "2": ["<a_2>"]})
    with pytest.raises(ValueError, match=r"2 of 3 items missing \(e.g. \['3', '4'\]\)"):
        load_index_json(path, ["1", "3", "4"])
    with pytest.raises(ValueError, match=r"'\[PAD\]' padding token"):
        load_index_json(path, ["[PAD]", "1", "2"])
    with pytest.raises(ValueError, match="duplicates"):
        load_index_json(path, ["1", "1"])


def test_export_index_json_validates(tmp_path):
    with pytest.raises(ValueError, match="one token per row"):
        export_index_json(np.zeros((2, 2), np.int64), ["a"], tmp_path / "x.json")
    with pytest.raises(ValueError, match="duplicates"):
        export_index_json(np.zeros((2, 2), np.int64), ["a", "a"], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not (INSTRUMENTS / "Instruments.index.json").exists(), reason="no shared data")
def test_published_instruments_index_is_made_unique():
    path = INSTRUMENTS / "Instruments.index.json"
    tokens = [str(i) for i in range(9922)]
    codes, info = load_index_json(path, tokens)
    assert codes.shape == (9922, 4)
    assert info["distinct"] == 9897 and info["collision_rate"] == pytest.approx(1 - 9897 / 9922)
    assert info["level_sizes"] == [256, 256, 256, 256] and info["ignored_items"] == 0
    unique, mu = make_unique(codes)
    assert count_collisions(unique)["distinct"] == 9922
    assert mu["extra_level_added"] and mu["extra_level_items"] == 9922 - 9897
    np.testing.assert_array_equal(unique[:, :4], codes)


# --------------------------------------------------------------------------- SemanticIDTable
def test_semantic_id_table():
    codes = np.array([[0, 2, 0], [0, 2, 1], [1, 0, 0]])
    table = SemanticIDTable(codes, level_sizes=[2, 3])  # base sizes; extra size inferred = 2
    assert table.table.shape == (4, 3)
    np.testing.assert_array_equal(table.table[0], [-1, -1, -1])
    np.testing.assert_array_equal(table.table[1:], codes)
    assert table.level_sizes == (2, 3, 2) and table.n_items == 3 and table.n_levels == 3
    np.testing.assert_array_equal(table.level_offsets, [0, 2, 5])
    assert table.code_token_strings() == [
        "<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>", "<c_0>", "<c_1>",
    ]
    assert table.item_token_strings([3]) == [["<a_1>", "<b_0>", "<c_0>"]]
    with pytest.raises(ValueError):
        table.table[1, 0] = 5  # read-only: shared with models
    with pytest.raises(ValueError, match="make_unique"):
        SemanticIDTable(np.array([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="codebook size"):
        SemanticIDTable(codes, level_sizes=[1, 3, 2])
    with pytest.raises(ValueError, match="padding"):
        table.item_token_strings([0])


# --------------------------------------------------------------------------- report
def test_usage_metrics_hand_computed():
    # level 1 codebook of 4: codes used 3x, 1x, 0x, 0x; level 2 codebook of 2: 2x, 2x
    before = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    after = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]])
    rep = tokenizer_report(before, after, None, [4, 2])
    assert rep["utilisation@L1"] == pytest.approx(2 / 4)
    assert rep["utilisation@L2"] == pytest.approx(1.0)
    # H = -(.75 ln .75 + .25 ln .25) = 0.562335, normalised by ln 4
    assert rep["entropy@L1"] == pytest.approx(0.5623351446 / math.log(4))
    assert rep["entropy@L2"] == pytest.approx(1.0)
    # sorted counts [0,0,1,3]: sum (2i-5) x_i = 1*1 + 3*3 = 10; / (4 * 4) = 0.625
    assert rep["gini@L1"] == pytest.approx(0.625)
    assert rep["gini@L2"] == pytest.approx(0.0)
    assert rep["collisions_before"] == 2 and rep["collision_rate_before"] == pytest.approx(0.25)
    assert rep["collisions_after"] == 0 and rep["extra_level_items"] == 1
    assert math.isnan(rep["cf_neighbour_agreement"])
    assert gini(np.array([0, 0, 5])) == pytest.approx(2 / 3)  # one code takes all: (n-1)/n
    assert normalised_entropy(np.array([7])) == 1.0


def test_cf_neighbour_agreement_hand_computed(monkeypatch):
    # Two obvious CF clusters; item 5 sits in cluster B but got cluster A's first-level code.
    emb = np.array(
        [[1, 0.01], [1, 0.02], [1, 0.03], [0.01, 1], [0.02, 1], [0.03, 1]], dtype=np.float32
    )
    emb[1] *= 5  # cosine ignores scale
    first = np.array([0, 0, 0, 1, 1, 0])
    # k=2 neighbours: items 0-2 agree 2/2; items 3,4 agree 1/2 (item 5); item 5 agrees 0/2
    expected = (1 + 1 + 1 + 0.5 + 0.5 + 0) / 6
    assert cf_neighbour_agreement(first, emb, 2) == pytest.approx(expected)
    monkeypatch.setattr(report_mod, "_BLOCK_ELEMENTS", 12)  # 2 rows per block: same answer
    assert cf_neighbour_agreement(first, emb, 2) == pytest.approx(expected)
    codes = np.stack([first, np.arange(6)], axis=1)
    rep = tokenizer_report(codes, codes, emb, [2, 6], k_neighbours=2)
    assert rep["cf_neighbour_agreement"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="aligned"):
        cf_neighbour_agreement(first, emb[:5])


def test_report_validates_shapes():
    with pytest.raises(ValueError, match="codebook sizes"):
        tokenizer_report(np.zeros((3, 2), np.int64), np.zeros((3, 4), np.int64), None, [2, 2])


def test_format_report_lists_every_metric():
    codes = np.array([[0, 0], [1, 1]])
    text = format_report(tokenizer_report(codes, codes, None, [2, 2]))
    assert "collisions_after        0" in text
    assert "cf_neighbour_agreement  n/a" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["level"]).split()
    assert header == ["level", "codes", "used", "utilisation", "entropy_bits", "entropy", "gini"]
    assert next(line for line in lines if line.split()[:1] == ["L1"]).split() == [
        "L1", "2", "2", "1.0000", "1.0000", "1.0000", "0.0000"
    ]
    assert "over ALL codes of the level" in text  # the Gini definition travels with the numbers


def test_plot_code_usage_writes_png(tmp_path):
    codes = np.array([[0, 1, 0], [0, 2, 1], [3, 0, 0]])
    path = plot_code_usage(codes, [4, 3], tmp_path / "plots" / "usage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["usage.png"]  # atomic: no temp left
    with pytest.raises(ValueError, match="codebook sizes"):
        plot_code_usage(codes, [4], tmp_path / "x.png")


def test_table_with_unassigned_items(tmp_path):
    codes = np.array([[0, 1], [-1, -1], [1, 0], [-1, -1]])
    with pytest.raises(ValueError, match="negative codes"):
        SemanticIDTable(codes)
    table = SemanticIDTable(codes, level_sizes=[3, 2], allow_unassigned=True)
    assert table.assigned.tolist() == [False, True, False, True, False]
    assert "unassigned=2" in repr(table)
    tokens = table.item_token_table(first_token=10, pad_token=0)
    assert tokens[[0, 2, 4]].tolist() == [[0, 0]] * 3 and tokens[1].tolist() == [10, 14]
    with pytest.raises(ValueError, match="no code yet"):
        table.item_token_strings([2])
    table.export_index_json(["a", "b", "c", "d"], tmp_path / "i.json")
    assert json.loads((tmp_path / "i.json").read_text()) == {"a": ["<a_0>", "<b_1>"], "c": ["<a_1>", "<b_0>"]}

    filled = table.with_new_items(np.array([[2, 1]]), item_ids=[4])
    assert filled.table[4].tolist() == [2, 1] and filled.level_sizes == (3, 2)
    assert table.table[4].tolist() == [-1, -1]  # the original is unchanged
    grown = filled.with_new_items(np.array([[2, 0], [0, 0]]))
    assert grown.n_items == 6 and grown.table[5:].tolist() == [[2, 0], [0, 0]]
    with pytest.raises(ValueError, match="already have codes"):
        filled.with_new_items(np.array([[1, 1]]), item_ids=[4])
    with pytest.raises(ValueError, match="share a code tuple"):
        filled.with_new_items(np.array([[0, 1]]), item_ids=[2])
    with pytest.raises(ValueError, match="level sizes"):
        filled.with_new_items(np.array([[3, 0]]), item_ids=[2])
