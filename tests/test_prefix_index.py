"""Prefix index: both layouts (dense tables, sparse CSR) describe the same trie and give identical beams."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_letter.generation import prefix_index as prefix_index_module
from recbole_letter.generation.beam_search import constrained_beam_search, scatter_scores
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.tokenization.semantic_ids import SemanticIDTable, make_unique
from decoding import TableStepper, unique_table

torch.set_num_threads(1)
LAYOUTS = ("dense", "sparse")


def colliding_then_resolved(n_items: int, n_levels: int, n_codes: int, seed: int) -> np.ndarray:
    """A table whose raw tuples collide, made unique by ``make_unique`` (adds the extra level)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, n_codes, size=(n_items, n_levels))
    resolved, info = make_unique(raw)
    assert info["extra_level_added"], "fixture must exercise the extra disambiguation level"
    return np.concatenate([np.full((1, resolved.shape[1]), -1), resolved]).astype(np.int64)


def offsets_for(table: np.ndarray) -> list[int]:
    """Code tokens after two special tokens; the layout is the SemanticIDTable's."""
    return SemanticIDTable.from_padded(table).token_offsets(2)


def oracle_scores(stepper: TableStepper, table: np.ndarray, offsets: list[int]) -> torch.Tensor:
    """Exact sequence log-prob of every item; column 0 (padding) = -inf."""
    logp = stepper.sequence_log_probs(torch.as_tensor(table[1:]) + torch.tensor(offsets))
    return torch.cat([torch.full((logp.shape[0], 1), float("-inf"), dtype=logp.dtype), logp], dim=1)


def search(table: np.ndarray, layout: str, beam: int, batch: int = 6, seed: int = 0):
    """Beam search over fixed log-prob tables (exact arithmetic: no float noise from batched
    matmuls whose shapes could differ between layouts)."""
    index = PrefixIndex(table, layout=layout)
    offsets = offsets_for(table)
    tables = TableStepper(batch, 2 + sum(index.level_sizes), index.n_levels, seed)
    stepper = tables.for_contexts(torch.arange(batch))
    items, scores = constrained_beam_search(stepper, index, offsets, beam)
    return index, tables, offsets, items, scores


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hand_table(layout):
    table = np.array([[-1, -1], [0, 1], [0, 2], [1, 0]])
    index = PrefixIndex(table, layout=layout)
    assert index.layout == layout and index.level_sizes == [2, 3] and index.n_prefixes == [1, 2]
    # Level 0: the empty prefix allows codes 0 and 1, leading to prefixes 0 and 1.
    slots = torch.arange(index.width(0))
    code, child = index.follow(0, torch.zeros_like(slots), slots)
    assert sorted(zip(code[child >= 0].tolist(), child[child >= 0].tolist())) == [(0, 0), (1, 1)]
    # Level 1: prefix (0,) allows codes 1, 2 -> items 1, 2; prefix (1,) allows code 0 -> item 3.
    allowed = {}
    for prefix in (0, 1):
        slots = torch.arange(index.width(1))
        code, child = index.follow(1, torch.full_like(slots, prefix), slots)
        allowed[prefix] = sorted(zip(code[child >= 0].tolist(), child[child >= 0].tolist()))
    assert allowed == {0: [(1, 1), (2, 2)], 1: [(0, 3)]}
    logp = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]).log()
    cand = index.candidates(1, torch.tensor([0, 1]), logp)
    assert sorted(cand[0][torch.isfinite(cand[0])].tolist()) == pytest.approx(sorted(logp[0, 1:].tolist()))
    assert cand[1][torch.isfinite(cand[1])].tolist() == pytest.approx([logp[1, 0].item()])


@pytest.mark.parametrize(
    "table, message",
    [
        (np.array([[-1, -1], [0, 1], [0, 1]]), "duplicate"),
        (np.array([[-1, -1], [0, -1], [1, 1]]), "mix negative"),
        (np.array([[-1, -1]]), "no item rows"),
        (np.array([-1, 0, 1]), "2-D"),
    ],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rejects_bad_tables(table, message, layout):
    with pytest.raises(ValueError, match=message):
        PrefixIndex(table, layout=layout)


def test_rejects_unknown_layout():
    with pytest.raises(ValueError, match="prefix_index must be one of auto, dense, sparse"):
        PrefixIndex(np.array([[-1], [0]]), layout="csr")


@settings(max_examples=40, deadline=None)
@given(
    n_items=st.integers(1, 60),
    n_levels=st.integers(1, 4),
    n_codes=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    layout=st.sampled_from(LAYOUTS),
)
def test_walks_reach_exactly_the_items(n_items, n_levels, n_codes, seed, layout):
    """Following every item's codes slot by slot reaches that item; the edge count is the trie's."""
    n_items = min(n_items, n_codes**n_levels)
    table = unique_table(n_items, n_levels, n_codes, seed)
    index = PrefixIndex(table, layout=layout)
    prefix = torch.zeros(n_items, dtype=torch.long)
    codes = torch.as_tensor(table[1:])
    for level in range(n_levels):
        slots = torch.arange(index.width(level))
        slot_code, slot_child = index.follow(level, prefix[:, None].expand(-1, len(slots)), slots.expand(n_items, -1))
        hit = (slot_code == codes[:, level, None]) & (slot_child >= 0)
        assert (hit.sum(1) == 1).all()  # each item's next code is allowed exactly once
        prefix = slot_child[hit]
        everything = index.follow(level, torch.arange(index.n_prefixes[level])[:, None], slots)[1]
        assert int((everything >= 0).sum()) == len({tuple(r) for r in table[1:, : level + 1].tolist()})
    assert prefix.tolist() == list(range(1, n_items + 1))


# ---------------------------------------------------------------- same beams in both layouts
@pytest.mark.parametrize(
    "make_table",
    [
        lambda: unique_table(3000, n_levels=4, n_codes=8, seed=1),  # unique as quantised
        lambda: colliding_then_resolved(3000, n_levels=3, n_codes=8, seed=2),  # extra level from make_unique
        lambda: unique_table(500, n_levels=2, n_codes=64, seed=3),  # wide levels: auto = dense + sparse
    ],
    ids=["unique", "collisions_resolved", "wide"],
)
@pytest.mark.parametrize("beam", [1, 7, 20])
def test_layouts_give_identical_beams(make_table, beam):
    table = make_table()
    dense = search(table, "dense", beam)
    for layout in ("sparse", "auto"):
        other = search(table, layout, beam)
        assert torch.equal(dense[3], other[3])  # same items, same order
        assert torch.equal(dense[4], other[4])  # bitwise the same scores
    assert dense[3].shape == (6, beam) and (dense[3] >= 1).all()
    oracle = oracle_scores(dense[1], table, dense[2])
    assert torch.equal(dense[4], oracle.gather(1, dense[3]))  # scores are the items' true log-probs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exhaustive_beam_is_the_oracle(layout):
    """beam >= catalogue: every item is found, ranked exactly as the oracle, in either layout."""
    table = colliding_then_resolved(40, n_levels=2, n_codes=5, seed=4)
    n = table.shape[0] - 1
    _, stepper, offsets, items, scores = search(table, layout, beam=n + 3)
    top = oracle_scores(stepper, table, offsets).topk(n)
    assert torch.equal(items[:, :n], top.indices) and torch.equal(scores[:, :n], top.values)
    assert (items[:, n:] == -1).all() and torch.isneginf(scores[:, n:]).all()


# ---------------------------------------------------------------- memory and the automatic choice
def test_sparse_memory_grows_with_items_not_codes():
    """Sparse bytes per item stay flat as the catalogue grows 10x; dense bytes per item grow."""
    small = unique_table(2_000, n_levels=3, n_codes=256, seed=5)
    large = unique_table(20_000, n_levels=3, n_codes=256, seed=6)
    per_item = {
        layout: [PrefixIndex(t, layout=layout).nbytes() / (t.shape[0] - 1) for t in (small, large)]
        for layout in LAYOUTS
    }
    # CSR: 8 bytes per edge and per prefix, <= 2 * levels + 1 words per item.
    assert all(b <= 8 * (2 * 3 + 1) for b in per_item["sparse"])
    assert per_item["sparse"][1] <= 1.1 * per_item["sparse"][0]
    assert per_item["dense"][1] > 50 * per_item["sparse"][1]


def test_auto_keeps_dense_only_where_it_is_small_and_cheaper(monkeypatch):
    full = unique_table(16**3, n_levels=3, n_codes=16, seed=7)  # every prefix has all 16 children
    assert PrefixIndex(full).layout == "dense"
    # Typical semantic IDs: the first level has nearly every code, deeper prefixes a few children.
    typical = PrefixIndex(unique_table(1682, n_levels=4, n_codes=256, seed=8))
    assert typical.layouts == ["dense", "sparse", "sparse", "sparse"] and typical.layout == "mixed"
    # Memory bound: the deepest level of the full trie goes sparse once it would exceed the limit.
    level_bytes = [12 * n * s for n, s in zip([1, 16, 256], [16, 16, 16])]
    monkeypatch.setattr(prefix_index_module, "AUTO_DENSE_MAX_BYTES", sum(level_bytes) - 1)
    assert PrefixIndex(full).layouts == ["dense", "dense", "sparse"]
    assert PrefixIndex(full, layout="dense").nbytes() == sum(level_bytes)


def test_scatter_scores_fills_a_slice_in_place():
    items = torch.tensor([[2, -1], [1, 3]])
    scores = torch.tensor([[-0.5, float("-inf")], [-1.0, -2.0]])
    out = torch.zeros(3, 4)
    scatter_scores(items, scores, 4, out=out[1:])
    assert torch.equal(out[0], torch.zeros(4))
    expected = torch.tensor([[-np.inf, -np.inf, -0.5, -np.inf], [-np.inf, -1.0, -np.inf, -2.0]])
    assert torch.equal(out[1:], expected)
    with pytest.raises(ValueError, match="expected"):
        scatter_scores(items, scores, 5, out=out[1:])


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_item_prefixes_are_the_beam_states_that_lead_to_each_item(layout):
    """Walking each item's codes with ``follow`` visits exactly ``item_prefixes[item]``."""
    table = unique_table(300, n_levels=3, n_codes=8, seed=11)
    index = PrefixIndex(table, layout=layout)
    items = torch.arange(1, table.shape[0])
    codes = torch.as_tensor(table)[items]
    prefix = torch.zeros_like(items)
    for level in range(index.n_levels):
        assert torch.equal(index.item_prefixes[items, level], prefix)
        slots = torch.arange(index.width(level)).expand(len(items), -1)
        allowed = index.candidates(level, prefix, torch.zeros(len(items), index.level_sizes[level]))
        chosen_code, child = index.follow(level, prefix[:, None].expand_as(slots), slots)
        slot = ((chosen_code == codes[:, level : level + 1]) & torch.isfinite(allowed)).float().argmax(1)
        prefix = child.gather(1, slot[:, None]).squeeze(1)
    assert torch.equal(prefix, items)
