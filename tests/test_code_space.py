"""Generating codes for new items: the per-level code space and collision resolution by beams."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recbole_letter.generation.beam_search import constrained_beam_search
from recbole_letter.generation.code_space import CodeSpaceIndex
from recbole_letter.generation.new_items import generate_new_codes

SIZES = [3, 4, 2]
N_TEXT = 5  # vocabulary ids below the code tokens (text tokens the search must never emit)
OFFSETS = [N_TEXT, N_TEXT + 3, N_TEXT + 7]
VOCAB = N_TEXT + sum(SIZES)


class MarkovStepper:
    """Next-token log-probs depend on the row (first step) and on the previous token only."""

    def __init__(self, start: torch.Tensor, transition: torch.Tensor) -> None:
        self.first, self.transition = start, transition

    def start(self) -> torch.Tensor:
        return self.first[:, None, :]

    def advance(self, parent: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.transition[tokens]


def random_model(n_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    start = torch.log_softmax(torch.randn(n_rows, VOCAB, generator=gen) * 2, dim=-1)
    transition = torch.log_softmax(torch.randn(VOCAB, VOCAB, generator=gen) * 2, dim=-1)
    return start, transition


def brute_force(start: torch.Tensor, transition: torch.Tensor, row: int) -> dict[tuple[int, ...], float]:
    out = {}
    for codes in itertools.product(*(range(s) for s in SIZES)):
        tokens = [o + c for o, c in zip(OFFSETS, codes)]
        score = start[row, tokens[0]] + sum(transition[a, b] for a, b in zip(tokens, tokens[1:]))
        out[codes] = float(score)
    return out


def test_exhaustive_search_over_the_code_space_finds_the_best_tuples():
    start, transition = random_model(4, seed=0)
    index = CodeSpaceIndex(SIZES)
    n_tuples = int(np.prod(SIZES))
    flat, scores = constrained_beam_search(MarkovStepper(start, transition), index, OFFSETS, beam_size=n_tuples)
    codes = index.decode(flat)
    for row in range(4):
        truth = sorted(brute_force(start, transition, row).items(), key=lambda kv: -kv[1])
        assert [tuple(c) for c in codes[row].tolist()] == [t for t, _ in truth]
        np.testing.assert_allclose(scores[row].numpy(), [s for _, s in truth], rtol=1e-5)


def test_taken_tuples_are_never_generated():
    start, transition = random_model(3, seed=1)
    best = [max(brute_force(start, transition, r).items(), key=lambda kv: kv[1])[0] for r in range(3)]
    taken = np.array([[-1, -1, -1], *best])  # padding row ignored
    index = CodeSpaceIndex(SIZES, taken)
    flat, _ = constrained_beam_search(MarkovStepper(start, transition), index, OFFSETS, beam_size=5)
    got = {tuple(c) for c in index.decode(flat).reshape(-1, 3).tolist()}
    assert not got & set(best)
    assert index.flatten(np.array([[2, 3, 1]])).tolist() == [2 * 8 + 3 * 2 + 1]
    with pytest.raises(ValueError, match="level-1 code outside"):
        index.flatten(np.array([[0, 4, 0]]))


def test_new_items_collide_only_into_their_next_best_beam():
    # Three new items with the *same* prompt want the same tuple: the first keeps it, the others
    # take their next-best free beams; an existing item's tuple is never handed out.
    start, transition = random_model(1, seed=2)
    ranking = sorted(brute_force(start, transition, 0).items(), key=lambda kv: -kv[1])
    existing = np.array([ranking[1][0]])  # the second-best tuple belongs to an existing item

    def make_stepper(rows):
        return MarkovStepper(start.expand(len(rows), -1), transition)

    exhaustive = int(np.prod(SIZES))  # a beam this wide is exact, so the expected order is the brute force's
    codes, scores, info = generate_new_codes(make_stepper, 3, SIZES, OFFSETS, existing, exhaustive, batch_size=2)
    assert [tuple(c) for c in codes.tolist()] == [ranking[0][0], ranking[2][0], ranking[3][0]]
    np.testing.assert_allclose(scores, [ranking[0][1], ranking[2][1], ranking[3][1]], rtol=1e-5)
    assert info["moved_to_next_beam"] == 2
    # with a beam of one, later items are decoded again against the grown exclusion set
    codes1, _, info1 = generate_new_codes(make_stepper, 3, SIZES, OFFSETS, existing, beam_size=1, batch_size=3)
    tuples = [tuple(c) for c in codes1.tolist()]
    assert len(set(tuples)) == 3 and ranking[1][0] not in tuples
    assert info1["redecoded"] == 3  # two items in round 1, one in round 2


def test_a_full_code_space_is_a_clear_error():
    start, transition = random_model(1, seed=3)
    everything = np.array(list(itertools.product(*(range(s) for s in SIZES))))
    with pytest.raises(ValueError, match="no free code tuple"):
        generate_new_codes(lambda rows: MarkovStepper(start, transition), 1, SIZES, OFFSETS, everything, 4, 1)


def test_prefixes_whose_completions_are_all_taken_are_skipped_even_by_a_greedy_beam():
    start, transition = random_model(1, seed=4)
    best = max(brute_force(start, transition, 0).items(), key=lambda kv: kv[1])[0]
    # take every completion of the best tuple's two-code prefix: a beam of one must go elsewhere
    taken = np.array([[best[0], best[1], c] for c in range(SIZES[2])])
    index = CodeSpaceIndex(SIZES, taken)
    flat, scores = constrained_beam_search(MarkovStepper(start, transition), index, OFFSETS, beam_size=1)
    got = tuple(index.decode(flat)[0, 0].tolist())
    assert torch.isfinite(scores).all() and got[:2] != best[:2]
