"""Generation building blocks: prefix tables, constrained beam search, ranking-guided loss, LR schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_letter.generation.beam_search import constrained_beam_search, scatter_scores
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.trainer import lr_lambda
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from decoding import TableStepper, unique_table

torch.set_num_threads(1)


# ---------------------------------------------------------------- beam search
def offsets_for(table: np.ndarray) -> list[int]:
    """Code tokens after two special tokens; the layout is the SemanticIDTable's."""
    return SemanticIDTable.from_padded(table).token_offsets(2)


def oracle_scores(stepper: TableStepper, table: np.ndarray, offsets: list[int]) -> torch.Tensor:
    """Exact log-prob of every item (column = item id, column 0 = -inf)."""
    tokens = torch.as_tensor(table[1:]) + torch.tensor(offsets)
    scores = stepper.sequence_log_probs(tokens)
    return torch.cat([torch.full((scores.shape[0], 1), float("-inf"), dtype=scores.dtype), scores], dim=1)


def test_exhaustive_beam_is_the_oracle():
    """beam_size = catalogue size: beam search returns every item, ranked exactly as the oracle."""
    table = unique_table(30, n_levels=3, n_codes=4, seed=1)
    index = PrefixIndex(table)
    offsets = offsets_for(table)
    vocab = 2 + sum(index.level_sizes)
    items, scores = constrained_beam_search(TableStepper(4, vocab, 3, seed=2), index, offsets, beam_size=30)
    top = oracle_scores(TableStepper(4, vocab, 3, seed=2), table, offsets).topk(30)
    assert torch.equal(items, top.indices)
    torch.testing.assert_close(scores, top.values)


def test_narrow_beam_finds_beam_size_real_items():
    """A beam narrower than the catalogue still returns beam_size distinct real items, best first."""
    table = unique_table(200, n_levels=3, n_codes=8, seed=3)
    index = PrefixIndex(table)
    offsets = offsets_for(table)
    vocab = 2 + sum(index.level_sizes)
    items, scores = constrained_beam_search(TableStepper(5, vocab, 3, seed=4), index, offsets, beam_size=20)
    assert items.shape == (5, 20) and (items >= 1).all()
    assert all(len(set(row)) == 20 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    oracle = oracle_scores(TableStepper(5, vocab, 3, seed=4), table, offsets)
    torch.testing.assert_close(scores, oracle.gather(1, items))
    dense = scatter_scores(items, scores, table.shape[0])
    assert int(torch.isfinite(dense).sum()) == 5 * 20


def test_catalogue_smaller_than_beam_marks_empty_beams():
    """Fewer items than beams: the extra beams are -inf / item -1 and never reach the score matrix."""
    table = unique_table(5, n_levels=2, n_codes=3, seed=6)
    index = PrefixIndex(table)
    stepper = TableStepper(3, 2 + sum(index.level_sizes), 2, seed=7)
    items, scores = constrained_beam_search(stepper, index, offsets_for(table), 8)
    alive = torch.isfinite(scores)
    assert (alive.sum(1) == 5).all()
    assert (items[~alive] == -1).all()
    assert sorted(items[0, alive[0]].tolist()) == [1, 2, 3, 4, 5]
    dense = scatter_scores(items, scores, 6)
    assert torch.isinf(dense[:, 0]).all() and torch.isfinite(dense[:, 1:]).all()


# ---------------------------------------------------------------- loss
def test_ranking_guided_loss_at_tau_one_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 11, generator=g)
    targets = torch.randint(0, 11, (4, 3), generator=g)
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(ranking_guided_loss(logits, targets, tau=1.0), expected)
    torch.testing.assert_close(
        ranking_guided_loss(logits, targets, tau=0.5),
        F.cross_entropy(2 * logits.reshape(-1, 11), targets.reshape(-1)),
    )


def test_ranking_guided_loss_by_hand():
    """logits (2, 0, 0), target 0: CE = log(e^{2/t} + 2) - 2/t."""
    logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    for tau in (1.0, 0.5, 0.7):
        hand = math.log(math.exp(2 / tau) + 2) - 2 / tau
        assert ranking_guided_loss(logits, target, tau).item() == pytest.approx(hand, rel=1e-5)


def test_ranking_guided_loss_ignores_masked_positions_and_bad_tau():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])
    loss = ranking_guided_loss(logits, torch.tensor([[0, -100]]), tau=1.0)
    assert loss.item() == pytest.approx(math.log(math.exp(2) + 1) - 2, rel=1e-5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        ranking_guided_loss(logits, torch.tensor([[0, 1]]), tau=0.0)


def test_lower_tau_weights_hard_negatives_more():
    """LETTER's claim: at lower tau the gradient shifts toward the strongest wrong code."""
    logits = torch.tensor([[3.0, 2.5, 0.0, 0.0]], requires_grad=True)  # target 0, hard negative 1
    shares = []
    for tau in (1.0, 0.5):
        (grad,) = torch.autograd.grad(ranking_guided_loss(logits, torch.tensor([0]), tau), logits)
        shares.append(grad[0, 1] / grad[0, 1:].sum())
    assert shares[1] > shares[0]


# ---------------------------------------------------------------- schedules
def test_lr_schedules():
    cosine = lr_lambda("cosine", warmup_steps=10, total_steps=110)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0, abs=1e-12)
    inv = lr_lambda("inverse_sqrt", warmup_steps=100, total_steps=0)
    assert inv(100) == pytest.approx(1.0) and inv(400) == pytest.approx(0.5)
    assert lr_lambda("none", 0, 5)(1000) == 1.0
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        lr_lambda("linear", 0, 5)
    with pytest.raises(ValueError, match="needs warmup_steps > 0"):
        lr_lambda("inverse_sqrt", 0, 5)
