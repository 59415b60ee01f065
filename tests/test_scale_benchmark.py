"""benchmarks/scale.py helpers: the synthetic tables and the dense-size estimate that decides what to skip."""
from pathlib import Path

import numpy as np
import pytest

from recbole_letter.generation.prefix_index import PrefixIndex

ROOT = Path(__file__).resolve().parents[1]




def test_random_table_is_padded_distinct_sorted_and_in_range(scale):
    table = scale.random_table(5_001, levels=3, codes=32, seed=0)
    assert table.shape == (5_001, 3) and (table[0] == -1).all()
    items = table[1:]
    assert items.min() >= 0 and items.max() < 32
    assert len({tuple(row) for row in items.tolist()}) == 5_000
    assert [tuple(r) for r in items.tolist()] == sorted(tuple(r) for r in items.tolist())
    assert not np.array_equal(table, scale.random_table(5_001, levels=3, codes=32, seed=1))
    with pytest.raises(ValueError, match="do not fit in int64"):
        scale.random_table(10, levels=8, codes=256, seed=0)


def test_dense_estimate_is_what_the_dense_layout_allocates(scale):
    """The benchmark skips dense builds by this estimate, so it must match the real tables."""
    table = scale.random_table(3_001, levels=3, codes=64, seed=2)
    sparse = PrefixIndex(table, layout="sparse")
    estimate = scale.dense_bytes_estimate(sparse.n_prefixes, sparse.level_sizes)
    assert estimate == PrefixIndex(table, layout="dense").nbytes()
