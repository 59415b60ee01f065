"""generation/t5_fast.py: the training forward computes HF T5's function with HF's weights.

Dropout off: logits and gradients equal HF's forward. Dropout on: masks keep 1 - p of the
entries and activations are rescaled as nn.Dropout does (checked in distribution, not bitwise).
"""
from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation import t5_fast


def tiny_t5(dropout: float = 0.0, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=dropout, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 40, (6, 12), generator=g)
    lengths = torch.tensor([12, 9, 5, 12, 1, 7])
    mask = torch.arange(12)[None] < lengths[:, None]
    decoder_in = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randint(2, 40, (6, 3), generator=g)], 1)
    return ids.masked_fill(~mask, 0), mask, decoder_in


@pytest.mark.parametrize("training, dropout", [(False, 0.0), (True, 0.0), (True, 1e-9)])
def test_logits_and_gradients_equal_hf_without_dropout(training, dropout):
    """Dropout 0: same logits as HF's forward, and the same gradient for every parameter.
    Dropout 1e-9 (rounds to no drop in the fast masks; HF drops nothing in practice) runs the
    fast forward's dropout code paths (explicit attention, in-place ReLU dropout, folded
    rescaling) and must give the same numbers too."""
    t5 = tiny_t5(dropout=dropout).train(training)
    ids, mask, decoder_in = batch()
    ref = t5(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_in, use_cache=False).logits
    ref_grads = torch.autograd.grad(ref.square().mean(), list(t5.parameters()))
    fast = t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids)
    fast_grads = torch.autograd.grad(fast.square().mean(), list(t5.parameters()))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(t5.named_parameters(), fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_eval_mode_ignores_dropout_rate():
    t5 = tiny_t5(dropout=0.3).eval()
    ids, mask, decoder_in = batch()
    with torch.no_grad():
        ref = t5(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_in).logits
        torch.testing.assert_close(t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids), ref, rtol=1e-5, atol=1e-5)


def test_inputs_embeds_is_the_same_as_the_ids_embeddings():
    t5 = tiny_t5().eval()
    ids, mask, decoder_in = batch()
    with torch.no_grad():
        by_ids = t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids)
        by_embeds = t5_fast.t5_logits(t5, mask, decoder_in, inputs_embeds=t5.shared(ids))
    torch.testing.assert_close(by_embeds, by_ids)
    with pytest.raises(ValueError, match="exactly one"):
        t5_fast.t5_logits(t5, mask, decoder_in)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_rate_and_seeding(p):
    torch.manual_seed(3)
    mask = t5_fast.keep_mask((400, 500), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (400, 500)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.005
    # each of the four 16-bit lanes of a 64-bit draw is uniform (no biased lane)
    lanes = mask.flatten()[: 400 * 500 // 4 * 4].view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max() < 0.01
    torch.manual_seed(3)
    assert torch.equal(t5_fast.keep_mask((400, 500), p, torch.device("cpu")), mask)


def test_relu_dropout_in_place_forward_and_backward_use_one_mask():
    """The feed-forward's fused ReLU + dropout: output relu(x) on kept entries, zero elsewhere;
    the gradient flows exactly where the output is kept and positive (drop mask from the same
    seed), with no stored mask."""
    x = torch.randn(64, 50)
    upstream = torch.randn(64, 50)
    torch.manual_seed(5)
    dropped = t5_fast.drop_mask(x.shape, 0.3, x.device)
    assert 0.25 < dropped.float().mean().item() < 0.35
    keep = (~dropped).float()

    leaf = x.clone().requires_grad_()
    torch.manual_seed(5)
    out = t5_fast._ReluDropoutInPlace.apply(leaf * 1.0, 0.3)  # in place on a non-leaf, as wi's output is
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), torch.relu(x) * keep)
    torch.testing.assert_close(leaf.grad, upstream * keep * (x > 0).float())


def test_training_dropout_matches_hf_in_distribution():
    """Dropout on: the fast forward is stochastic like HF's, with the same mean output (the
    1/(1-p) rescaling) and a spread of the same size."""
    t5 = tiny_t5(dropout=0.2).train()
    ids, mask, decoder_in = batch()
    with torch.no_grad():
        ref = torch.stack([t5(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_in).logits for _ in range(200)])
        fast = torch.stack([t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids) for _ in range(200)])
    assert not torch.equal(fast[0], fast[1])
    assert (fast.mean(0) - ref.mean(0)).abs().mean() < 0.1 * ref.std(0).mean()
    assert 0.8 < fast.std(0).mean() / ref.std(0).mean() < 1.25


def test_bf16_is_close_to_fp32():
    t5 = tiny_t5().eval()
    ids, mask, decoder_in = batch()
    with torch.no_grad():
        fp32 = t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids)
        bf16 = t5_fast.t5_logits(t5, mask, decoder_in, input_ids=ids, bf16=True)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_gated_feed_forward_is_refused():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                             feed_forward_proj="gated-gelu"))
    with pytest.raises(ValueError, match="feed_forward_proj='relu' only"):
        t5_fast.check_supported(t5)
