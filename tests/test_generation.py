"""Generation building blocks: prefix tables, constrained beam search, ranking-guided loss, LR schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation.beam_search import constrained_beam_search, scatter_scores
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.trainer import lr_lambda
from recbole_letter.model.tiger import T5BeamStepper

torch.set_num_threads(1)


def unique_table(n_items: int, n_levels: int, n_codes: int, seed: int) -> np.ndarray:
    """Random distinct code tuples for items 1..n_items, row 0 = padding (-1)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_codes**n_levels, size=n_items, replace=False)
    codes = np.stack([(flat // n_codes**p) % n_codes for p in reversed(range(n_levels))], axis=1)
    return np.concatenate([np.full((1, n_levels), -1), codes]).astype(np.int64)


def tiny_t5(vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def offsets_for(index: PrefixIndex) -> list[int]:
    return [2 + sum(index.level_sizes[:l]) for l in range(index.n_levels)]


def exhaustive_scores(t5, input_ids, mask, table, offsets) -> torch.Tensor:
    """Teacher-forced log-prob of every item (column = item id, column 0 = -inf), by HF forward."""
    tokens = torch.as_tensor(table[1:]) + torch.tensor(offsets)
    n = tokens.shape[0]
    decoder_in = torch.cat([torch.zeros(n, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    rows = []
    with torch.no_grad():
        for b in range(input_ids.shape[0]):
            logits = t5(
                input_ids=input_ids[b : b + 1].expand(n, -1),
                attention_mask=mask[b : b + 1].expand(n, -1),
                decoder_input_ids=decoder_in,
            ).logits
            logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1).sum(-1)
            rows.append(torch.cat([torch.tensor([float("-inf")]), logp]))
    return torch.stack(rows)


def random_inputs(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded encoder inputs with varied lengths (the padding must not leak into decoding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


# ---------------------------------------------------------------- beam search
@pytest.mark.parametrize("use_cache", [True, False])
def test_exhaustive_beam_is_the_teacher_forced_oracle(use_cache):
    """beam_size = catalogue size: beam search returns every item, ranked exactly as teacher forcing."""
    table = unique_table(30, n_levels=3, n_codes=4, seed=1)
    index = PrefixIndex(table)
    offsets = offsets_for(index)
    t5 = tiny_t5(2 + sum(index.level_sizes))
    ids, mask = random_inputs(4, 9, t5.config.vocab_size, seed=2)
    stepper = T5BeamStepper(t5, ids, mask, use_cache=use_cache)
    items, scores = constrained_beam_search(stepper, index, offsets, beam_size=30)
    oracle = exhaustive_scores(t5, ids, mask, table, offsets)
    top = oracle.topk(30)
    assert torch.equal(items, top.indices)
    torch.testing.assert_close(scores, top.values, rtol=1e-5, atol=1e-5)


def test_narrow_beam_finds_beam_size_real_items():
    """A beam narrower than the catalogue still returns beam_size distinct real items, best first."""
    table = unique_table(200, n_levels=3, n_codes=8, seed=3)
    index = PrefixIndex(table)
    offsets = offsets_for(index)
    t5 = tiny_t5(2 + sum(index.level_sizes), seed=4)
    ids, mask = random_inputs(5, 12, t5.config.vocab_size, seed=5)
    items, scores = constrained_beam_search(T5BeamStepper(t5, ids, mask), index, offsets, beam_size=20)
    assert items.shape == (5, 20) and (items >= 1).all()
    assert all(len(set(row)) == 20 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    oracle = exhaustive_scores(t5, ids, mask, table, offsets)
    torch.testing.assert_close(scores, oracle.gather(1, items), rtol=1e-5, atol=1e-5)
    dense = scatter_scores(items, scores, table.shape[0])
    assert int(torch.isfinite(dense).sum()) == 5 * 20


def test_catalogue_smaller_than_beam_marks_empty_beams():
    """Fewer items than beams: the extra beams are -inf / item -1 and never reach the score matrix."""
    table = unique_table(5, n_levels=2, n_codes=3, seed=6)
    index = PrefixIndex(table)
    t5 = tiny_t5(2 + sum(index.level_sizes), seed=7)
    ids, mask = random_inputs(3, 4, t5.config.vocab_size, seed=8)
    items, scores = constrained_beam_search(T5BeamStepper(t5, ids, mask), index, offsets_for(index), 8)
    alive = torch.isfinite(scores)
    assert (alive.sum(1) == 5).all()
    assert (items[~alive] == -1).all()
    assert sorted(items[0, alive[0]].tolist()) == [1, 2, 3, 4, 5]
    dense = scatter_scores(items, scores, 6)
    assert torch.isinf(dense[:, 0]).all() and torch.isfinite(dense[:, 1:]).all()


def test_hf_generate_with_trie_agrees():
    """The released LETTER/LC-Rec decoding (HF generate + dict trie) finds the same top items."""
    table = unique_table(60, n_levels=3, n_codes=6, seed=9)
    index = PrefixIndex(table)
    offsets = offsets_for(index)
    t5 = tiny_t5(2 + sum(index.level_sizes), seed=10)
    ids, mask = random_inputs(3, 10, t5.config.vocab_size, seed=11)
    tokens = (torch.as_tensor(table[1:]) + torch.tensor(offsets)).tolist()
    trie: dict[tuple, set] = {}
    for row in tokens:
        for level in range(3):
            trie.setdefault(tuple(row[:level]), set()).add(row[level])
    item_of = {tuple(row): i + 1 for i, row in enumerate(tokens)}
    out = t5.generate(
        input_ids=ids, attention_mask=mask, num_beams=10, num_return_sequences=10, max_new_tokens=3,
        prefix_allowed_tokens_fn=lambda b, seq: sorted(trie.get(tuple(seq.tolist()[1:]), ())),
        do_sample=False, early_stopping=True,
    )
    hf_items = [[item_of[tuple(r[1:])] for r in out[b * 10 : (b + 1) * 10].tolist()] for b in range(3)]
    items, _ = constrained_beam_search(T5BeamStepper(t5, ids, mask), index, offsets, beam_size=10)
    assert items.tolist() == hf_items


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
