"""The quality report of any semantic-ID index: definitions checked on hand-computed tiny indices."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recbole_letter.tokenization.report import (
    chance_agreement,
    entropy_bits,
    explained_variance,
    index_report,
    main,
)


def _write_index(path, codes, keys=None):
    letters = "abcd"
    keys = keys or [str(i) for i in range(len(codes))]
    payload = {k: [f"<{letters[l]}_{c}>" for l, c in enumerate(row)] for k, row in zip(keys, codes)}
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


# 8 items, 2 levels, K = 4 codes per level.
# L1 uses codes 0 (5 items), 1 (3 items); codes 2 and 3 unused.
# L2 uses all four codes twice; items 0 and 1 share the full tuple (0, 0).
CODES = [[0, 0], [0, 0], [0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [1, 3]]


def test_index_report_hand_computed(tmp_path):
    path = _write_index(tmp_path / "tiny.index.json", CODES)
    rep = index_report(path, [4])
    assert rep["n_items"] == 8
    assert rep["codes@L1"] == 4 and rep["used@L1"] == 2 and rep["utilisation@L1"] == 0.5
    # Gini over all 4 codes, unused as 0: sorted [0, 0, 3, 5] -> (1*3 + 3*5) / (4 * 8) = 18/32
    assert rep["gini@L1"] == pytest.approx(18 / 32)
    # L2 counts [1+1, 2, 2, 2]: even -> Gini 0, 2 bits
    assert rep["gini@L2"] == pytest.approx(0.0)
    assert rep["entropy_bits@L2"] == pytest.approx(2.0)
    h1 = -(5 / 8 * math.log2(5 / 8) + 3 / 8 * math.log2(3 / 8))
    assert rep["entropy_bits@L1"] == pytest.approx(h1)
    assert rep["entropy@L1"] == pytest.approx(h1 / 2.0)  # log2(4) = 2
    assert rep["collisions_before"] == 2 and rep["collisions_after"] == 0
    assert rep["extra_level_items"] == 1
    assert math.isnan(rep["cf_agreement_lift"])
    # Counting only used codes (the mistake the definition rules out) would give Gini 0.125.
    assert rep["gini@L1"] != pytest.approx(0.125)


def test_index_report_codebook_size_default_and_errors(tmp_path):
    path = _write_index(tmp_path / "tiny.index.json", CODES)
    rep = index_report(path)  # LETTER.yaml's 256 codes per level
    assert rep["codes@L1"] == 256 and rep["used@L1"] == 2
    assert rep["gini@L1"] > 0.99  # 2 of 256 codes hold everything
    with pytest.raises(ValueError, match="--codebook_size 4"):
        index_report(path, [3])
    with pytest.raises(ValueError, match="one per level"):
        index_report(path, [4, 4, 4])


def test_cf_agreement_lift(tmp_path):
    path = _write_index(tmp_path / "tiny.index.json", CODES)
    # CF embeddings: items 0-4 point one way, 5-7 the other = exactly the first-level groups
    cf = np.array([[1, 0.1 * i] for i in range(5)] + [[0.1 * i, 1] for i in range(3)], dtype=np.float32)
    rep = index_report(path, [4], cf, k_neighbours=2)
    assert rep["cf_neighbour_agreement"] == pytest.approx(1.0)
    chance = (5 * 4 + 3 * 2) / (8 * 7)
    assert rep["cf_agreement_chance"] == pytest.approx(chance) == chance_agreement(np.array(CODES)[:, 0])
    assert rep["cf_agreement_lift"] == pytest.approx(1 / chance)


def test_entropy_and_explained_variance_hand_computed():
    assert entropy_bits(np.array([1, 1, 1, 1, 0, 0])) == pytest.approx(2.0)
    assert entropy_bits(np.array([0, 0])) == 0.0
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert explained_variance(x, x) == pytest.approx(1.0)
    assert explained_variance(x, np.tile(x.mean(0), (4, 1))) == pytest.approx(0.0)
    # error 1 on one coordinate of one row out of a total variance of 4 * (1 + 1) = 8
    off = x.copy()
    off[0, 0] += 1.0
    assert explained_variance(x, off) == pytest.approx(1 - 1 / 8)
    with pytest.raises(ValueError, match="same"):
        explained_variance(x, x[:3])


def test_cli_prints_report_with_definitions(tmp_path, capsys):
    path = _write_index(tmp_path / "tiny.index.json", CODES)
    cf = np.array([[1, 0.1 * i] for i in range(5)] + [[0.1 * i, 1] for i in range(3)], dtype=np.float32)
    np.save(tmp_path / "cf.npy", cf)
    out_json = tmp_path / "rep.json"
    rep = main([str(path), "--codebook_size", "4", "--cf_embedding_file", str(tmp_path / "cf.npy"),
                "--json", str(out_json)])
    text = capsys.readouterr().out
    assert "tiny.index.json" in text
    assert "over ALL codes of the level" in text and "in bits" in text
    row = next(line for line in text.splitlines() if line.split()[:1] == ["L1"]).split()
    assert row[1:3] == ["4", "2"] and float(row[-1]) == pytest.approx(18 / 32, abs=1e-4)
    assert json.loads(out_json.read_text())["report"]["gini@L1"] == pytest.approx(rep["gini@L1"])
    # with 8 items the 10 "nearest" neighbours are everyone else: agreement is exactly chance
    assert rep["cf_agreement_lift"] == pytest.approx(1.0)


def test_cli_rejects_a_misaligned_cf_file(tmp_path):
    path = _write_index(tmp_path / "tiny.index.json", CODES)
    np.save(tmp_path / "cf.npy", np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="cf_embedding_file"):
        main([str(path), "--cf_embedding_file", str(tmp_path / "cf.npy")])
