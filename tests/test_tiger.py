"""TIGER as a RecBole model: construction checks, decoding exactness, RecBole metrics, learning.

Every test builds a tiny atomic dataset under ``tmp_path`` and hands TIGER a random unique code
table as ``config["semantic_id_table"]``, as the runner does with the real stage's table (that
stage is tested with the tokenizer).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401  (applies the numpy-2 / torch shims before RecBole is imported)
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.evaluator import Collector, Evaluator

from recbole_letter.generation.trainer import GenerativeTrainer
from recbole_letter.model.tiger import TIGER
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from decoding import unique_table
from run_settings import leave_one_out_full_sort

TIGER_YAML = Path(__file__).resolve().parents[1] / "properties" / "model" / "TIGER.yaml"
DATASET = "succ"

# A T5 small enough to train in seconds on one CPU thread.
SMALL = {
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "d_model": 64,
    "num_heads": 4,
    "d_kv": 16,
    "d_ff": 128,
}


def write_successor_dataset(root: Path, n_items: int = 50, n_users: int = 200, seed: int = 0) -> Path:
    """Each user walks the item ring i -> i+1 (mod n_items) from a random start: a deterministic next item."""
    rng = np.random.default_rng(seed)
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        start, length = rng.integers(n_items), rng.integers(6, 12)
        for t in range(length):
            lines.append(f"u{user}\ti{(start + t) % n_items}\t{1000 * user + t}")
    (folder / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _isolated(workdir):
    """RecBole writes ./log and ./saved: run every test in its own directory (conftest's ``workdir``;
    conftest also hides pytest's argv from RecBole and pins one torch thread)."""


def with_random_table(config: Config, dataset) -> Config:
    """What the runner's stage resolution does, with a random unique table sized to the dataset."""
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(dataset.item_num - 1, 3, 8, seed=int(config["seed"])))
    return config


def make_config(tmp_path: Path, **overrides) -> Config:
    data_path = write_successor_dataset(tmp_path / "data")
    config_dict = {
        "data_path": str(data_path),
        **leave_one_out_full_sort(),
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "MAX_ITEM_LIST_LENGTH": 5,
        "topk": [1, 5, 10],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "NDCG@10",
        "beam_size": 10,
        "epochs": 1,
        "eval_batch_size": 1024,
        "seed": 7,
        **SMALL,
    }
    config_dict.update(overrides)
    return Config(model=TIGER, dataset=DATASET, config_file_list=[str(TIGER_YAML)], config_dict=config_dict)


def build(tmp_path: Path, **overrides):
    config = make_config(tmp_path, **overrides)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    with_random_table(config, train_data._dataset)
    model = TIGER(config, train_data._dataset).to(config["device"])
    return config, model, train_data, valid_data, test_data


def test_beam_smaller_than_topk_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"beam_size=5 < max\(topk\)=10"):
        build(tmp_path, beam_size=5)


def test_missing_key_names_the_key(tmp_path):
    config = make_config(tmp_path)
    dataset = create_dataset(config)
    with_random_table(config, dataset)
    config["tau"] = None
    with pytest.raises(ValueError, match="'tau' is missing; load properties/model/TIGER.yaml"):
        TIGER(config, dataset)


def test_encoder_input_is_history_codes(tmp_path):
    """History items expand to their code tokens in order, padding -> pad, user token first."""
    _, model, _, _, test_data = build(tmp_path, user_token_buckets=7)
    interaction = next(iter(test_data))[0]
    tokens, mask = model.encoder_inputs(interaction)
    seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    user = interaction[model.USER_ID]
    for row in range(3):
        n = int(lengths[row])
        expected = model.semantic_ids[seq[row, :n]] + torch.tensor(model.token_offsets)
        assert int(tokens[row, 0]) == model.user_token_offset + int(user[row]) % 7
        assert torch.equal(tokens[row, 1 : 1 + 3 * n], expected.flatten())
        assert not mask[row, 1 + 3 * n :].any() and mask[row, : 1 + 3 * n].all()
    assert model.t5.config.vocab_size == 2 + 3 * 8 + 7


def scores_by_teacher_forcing(model: TIGER, interaction) -> torch.Tensor:
    """Exhaustive oracle: log-prob of every real item for every user, ``[B, n_items]``."""
    n_users, n_items = len(interaction), model.n_items
    expanded = interaction.repeat_interleave(n_items - 1)
    expanded.update(
        type(interaction)({model.ITEM_ID: torch.arange(1, n_items).repeat(n_users)})
    )
    with torch.no_grad():
        scores = model.predict(expanded).view(n_users, n_items - 1)
    return torch.cat([torch.full((n_users, 1), float("-inf")), scores], dim=1)


def test_exhaustive_beam_equals_teacher_forced_ranking(tmp_path):
    """beam_size = catalogue size makes beam search exact: same top-K, order and scores."""
    _, model, _, _, test_data = build(tmp_path, beam_size=60)  # 50 items
    model.eval()
    interaction = next(iter(test_data))[0][:16]
    beam = model.full_sort_predict(interaction)
    oracle = scores_by_teacher_forcing(model, interaction)
    assert torch.isfinite(beam[:, 1:]).all()  # every item found
    top_beam, top_oracle = beam.topk(10), oracle.topk(10)
    assert torch.equal(top_beam.indices, top_oracle.indices)
    torch.testing.assert_close(top_beam.values, top_oracle.values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(beam[:, 1:], oracle[:, 1:], rtol=1e-4, atol=1e-4)


def test_beam_returns_only_real_items(tmp_path):
    """Default-size beam: exactly beam_size distinct real items per user, -inf elsewhere."""
    _, model, _, _, test_data = build(tmp_path, beam_size=12, decode_batch_size=7)
    model.eval()
    interaction = next(iter(test_data))[0][:40]
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(interaction), model.n_items)
    finite = torch.isfinite(scores)
    assert (finite.sum(1) == 12).all()  # >= max(topk) = 10
    assert not finite[:, 0].any()  # padding item never generated
    oracle = scores_by_teacher_forcing(model, interaction)
    torch.testing.assert_close(scores[finite], oracle[finite], rtol=1e-4, atol=1e-4)


def test_recbole_evaluator_handles_inf_scores(tmp_path):
    """Our -inf scores go through RecBole's Collector/Evaluator as a hand computation says."""
    config = make_config(tmp_path)
    dataset = create_dataset(config)
    collector = Collector(config)
    n_items = dataset.item_num
    scores = torch.full((4, n_items), float("-inf"))
    beam = {0: [5, 3, 9, 11, 12, 13, 14, 15, 16, 17], 1: [4, 8, 2, 20, 21, 22, 23, 24, 25, 26],
            2: [30, 31, 32, 33, 34, 35, 36, 37, 38, 39], 3: [7, 6, 1, 40, 41, 42, 43, 44, 45, 46]}
    for user, items in beam.items():
        scores[user, items] = -torch.arange(1.0, len(items) + 1)  # best first
    positive = torch.tensor([3, 20, 1, 7])  # ranks 1, 3, not found (would win -inf ties), 0
    collector.eval_batch_collect(scores, None, torch.arange(4), positive)
    result = Evaluator(config).evaluate(collector.get_data_struct())
    ranks = [1, 3, None, 0]
    for k in (1, 5, 10):
        recall = np.mean([r is not None and r < k for r in ranks])
        ndcg = np.mean([1 / np.log2(r + 2) if r is not None and r < k else 0.0 for r in ranks])
        assert result[f"recall@{k}"] == pytest.approx(recall, abs=1e-4)
        assert result[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-4)


def test_learns_deterministic_successor(tmp_path):
    """Item i is always followed by i+1: TIGER must reach Recall@1 >= 0.95 through RecBole."""
    config, model, train_data, valid_data, test_data = build(
        tmp_path, epochs=20, eval_step=10, stopping_step=100, learning_rate=0.003, dropout_rate=0.0,
        lr_scheduler="cosine", warmup_steps=10,
    )
    trainer = TIGER.trainer_class(config, model)
    trainer.fit(train_data, valid_data, saved=False, verbose=False)
    result = trainer.evaluate(test_data, load_best_model=False)
    assert result["recall@1"] >= 0.95, result


def _one_update(model: TIGER, config, batches, accumulation: int) -> dict[str, torch.Tensor]:
    config["gradient_accumulation_steps"] = accumulation
    trainer = GenerativeTrainer(config, model)
    trainer._train_epoch(batches, 0)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class _Batches(list):
    """A list of interactions that looks enough like a RecBole DataLoader for ``_train_epoch``."""

    shuffle = False


def test_gradient_accumulation_equals_double_batch(tmp_path):
    """Two accumulated half batches give the update of one full batch (SGD, no dropout)."""
    config, model, train_data, _, _ = build(tmp_path, dropout_rate=0.0, learner="sgd", learning_rate=0.5)
    batch = next(iter(train_data))[:64]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    full = _one_update(model, config, _Batches([batch]), accumulation=1)
    model.load_state_dict(state)
    halves = _one_update(model, config, _Batches([batch[:32], batch[32:]]), accumulation=2)
    model.load_state_dict(state)
    separate = _one_update(model, config, _Batches([batch[:32], batch[32:]]), accumulation=1)
    moved = 0.0
    for name in full:
        torch.testing.assert_close(halves[name], full[name], rtol=1e-4, atol=1e-6)
        moved = max(moved, float((separate[name] - full[name]).abs().max()))
    assert moved > 1e-4  # two separate updates differ: the check above is not vacuous


def test_checkpoint_from_other_semantic_ids_is_refused(tmp_path):
    _, model, _, _, _ = build(tmp_path)
    state = model.state_dict()
    state["semantic_ids"] = state["semantic_ids"].flip(0)
    with pytest.raises(ValueError, match="different semantic-ID table"):
        model.load_state_dict(state)


def test_trainer_steps_schedule_per_optimizer_update(tmp_path):
    """4 batches with accumulation 2 = 2 updates; warm-up 4 -> lr = 3/4 of the peak afterwards."""
    config, model, train_data, _, _ = build(
        tmp_path, lr_scheduler="cosine", warmup_steps=4, gradient_accumulation_steps=2, epochs=3,
        learning_rate=0.01,
    )
    batches = _Batches(list(train_data)[:4])
    trainer = GenerativeTrainer(config, model)
    trainer._train_epoch(batches, 0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 3 / 4)


def test_trainer_rejects_bad_schedule(tmp_path):
    config, model, _, _, _ = build(tmp_path, lr_scheduler="inverse_sqrt")
    with pytest.raises(ValueError, match="needs warmup_steps > 0"):
        GenerativeTrainer(config, model)


# ---------------------------------------------------------------- code_softmax / encoder_input / labels
@pytest.mark.parametrize("encoder_input", ["codes", "items"])
def test_trie_softmax_is_a_distribution_over_the_catalogue(tmp_path, encoder_input):
    """code_softmax=trie: the items' probabilities sum to 1 for every user (no mass on non-items)."""
    _, model, _, _, test_data = build(tmp_path, code_softmax="trie", encoder_input=encoder_input)
    model.eval()
    interaction = next(iter(test_data))[0][:8]
    probs = scores_by_teacher_forcing(model, interaction)[:, 1:].exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(8), rtol=1e-4, atol=1e-4)


def test_vocab_softmax_leaves_mass_on_non_items(tmp_path):
    """code_softmax=vocab (the papers' loss): untrained, most mass is on tokens that are no item."""
    _, model, _, _, test_data = build(tmp_path, code_softmax="vocab")
    model.eval()
    interaction = next(iter(test_data))[0][:8]
    assert (scores_by_teacher_forcing(model, interaction)[:, 1:].exp().sum(1) < 0.5).all()


@pytest.mark.parametrize("options", [{"code_softmax": "vocab"}, {"encoder_input": "items"},
                                     {"encoder_input": "items", "user_token_buckets": 5}])
def test_exhaustive_beam_equals_teacher_forcing_in_every_mode(tmp_path, options):
    """Beam scores and teacher-forced scores stay the same function whatever the options."""
    _, model, _, _, test_data = build(tmp_path, beam_size=60, **options)
    model.eval()
    interaction = next(iter(test_data))[0][:8]
    torch.testing.assert_close(model.full_sort_predict(interaction)[:, 1:],
                               scores_by_teacher_forcing(model, interaction)[:, 1:], rtol=1e-4, atol=1e-4)


def test_item_level_input_sums_code_embeddings(tmp_path):
    _, model, _, _, test_data = build(tmp_path, encoder_input="items", user_token_buckets=7)
    interaction = next(iter(test_data))[0][:4]
    embeds, mask = model.encoder_embeds(interaction)
    seq, lengths, user = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], interaction[model.USER_ID]
    for row in range(4):
        n = int(lengths[row])
        codes = model.semantic_ids[seq[row, :n]] + torch.tensor(model.token_offsets)
        torch.testing.assert_close(embeds[row, 1 : 1 + n], model.t5.shared(codes).sum(1))
        torch.testing.assert_close(embeds[row, 0], model.t5.shared.weight[model.user_token_offset + int(user[row]) % 7])
        assert mask[row, : 1 + n].all() and not mask[row, 1 + n :].any()


@pytest.mark.parametrize("options", [{"encoder_input": "items"}, {"code_softmax": "vocab", "fast_t5_forward": False}])
def test_other_modes_learn_deterministic_successor(tmp_path, options):
    config, model, train_data, valid_data, test_data = build(
        tmp_path, epochs=20, eval_step=10, stopping_step=100, learning_rate=0.003, dropout_rate=0.0,
        lr_scheduler="cosine", warmup_steps=10, **options,
    )
    trainer = TIGER.trainer_class(config, model)
    trainer.fit(train_data, valid_data, saved=False, verbose=False)
    assert trainer.evaluate(test_data, load_best_model=False)["recall@1"] >= 0.95


def test_bad_mode_values_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="code_softmax must be one of"):
        build(tmp_path, code_softmax="full")
    with pytest.raises(ValueError, match="encoder_input must be one of"):
        build(tmp_path, encoder_input="tokens")
    with pytest.raises(ValueError, match="bf16_autocast needs fast_t5_forward"):
        build(tmp_path, bf16_autocast=True, fast_t5_forward=False)


def test_result_label_names_ids_and_tau(tmp_path):
    config = make_config(tmp_path, item_tokenizer="LETTER", tau=0.7)
    assert TIGER.result_label(config) == "TIGER (LETTER IDs, tau 0.7)"
    config = make_config(tmp_path, item_tokenizer="RQVAE", tau=1.0, encoder_input="items")
    assert TIGER.result_label(config) == "TIGER (RQ-VAE IDs, tau 1.0, item-level input)"
    config = make_config(tmp_path, item_tokenizer=str(tmp_path / "Instruments.index.json"), code_softmax="vocab")
    assert TIGER.result_label(config) == "TIGER (IDs from Instruments.index.json, tau 1.0, vocab softmax)"
