"""T5BeamStepper: the T5 decoder on a [users, beams] grid gives the same scores as HF's own forward
and the same top items as HF ``generate`` with a prefix trie (the released LETTER/LC-Rec decoding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation.beam_search import constrained_beam_search
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.generation.t5_stepper import T5BeamStepper
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from decoding import unique_table


def offsets_for(table: np.ndarray) -> list[int]:
    """TIGER's layout: code tokens after two special tokens (pad/start, eos)."""
    return SemanticIDTable.from_padded(table).token_offsets(2)


def tiny_t5(vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


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


@pytest.mark.parametrize("use_cache", [True, False])
def test_exhaustive_beam_is_the_teacher_forced_oracle(use_cache):
    """beam_size = catalogue size: beam search returns every item, ranked exactly as teacher forcing."""
    table = unique_table(30, n_levels=3, n_codes=4, seed=1)
    index = PrefixIndex(table)
    offsets = offsets_for(table)
    t5 = tiny_t5(2 + sum(index.level_sizes))
    ids, mask = random_inputs(4, 9, t5.config.vocab_size, seed=2)
    stepper = T5BeamStepper(t5, ids, mask, use_cache=use_cache)
    items, scores = constrained_beam_search(stepper, index, offsets, beam_size=30)
    oracle = exhaustive_scores(t5, ids, mask, table, offsets)
    top = oracle.topk(30)
    assert torch.equal(items, top.indices)
    torch.testing.assert_close(scores, top.values, rtol=1e-5, atol=1e-5)


def test_hf_generate_with_trie_agrees():
    """The released LETTER/LC-Rec decoding (HF generate + dict trie) finds the same top items."""
    table = unique_table(60, n_levels=3, n_codes=6, seed=9)
    index = PrefixIndex(table)
    offsets = offsets_for(table)
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


def test_stepper_refuses_training_mode():
    t5 = tiny_t5(12).train()
    ids, mask = random_inputs(2, 3, 12, seed=0)
    with pytest.raises(RuntimeError, match="eval mode"):
        T5BeamStepper(t5, ids, mask)
