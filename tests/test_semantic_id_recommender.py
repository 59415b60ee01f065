"""SemanticIDRecommender, the base every generator over semantic IDs shares, tested with a
network-free subclass whose log-probabilities come from fixed tables (tests/decoding.py): the
checks here are about the base (table hand-over, layout, chunked decoding, teacher-forced
predict, checkpoint guard), not about any network."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_letter.config import build_config
from recbole_letter.model.base import SemanticIDRecommender
from recbole_letter.stages import resolve_stages
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from decoding import TableStepper, unique_table

N_LEVELS, N_CODES = 2, 6


class FixedTableGenerator(SemanticIDRecommender):
    """Log p(codes | history) from fixed tables, conditioned on the history's last item."""

    default_config_names = ("TIGER",)  # beam_size, decode_batch_size

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.place_code_tokens(first_token=3, pad_token=0)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # RecBole expects parameters
        self.tables = TableStepper(self.n_items, 3 + self.n_code_tokens, self.n_levels, seed=1)
        self.steppers_made = 0

    def _last_items(self, interaction) -> torch.Tensor:
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        return seq[torch.arange(len(seq)), length - 1]

    def make_stepper(self, interaction, **options) -> TableStepper:
        self.steppers_made += 1
        return self.tables.for_contexts(self._last_items(interaction))

    def item_log_probs(self, interaction, items: torch.Tensor) -> torch.Tensor:
        stepper = self.tables.for_contexts(self._last_items(interaction))
        return stepper.sequence_log_probs(self.item_tokens[items][:, None, :]).squeeze(1)

    def calculate_loss(self, interaction):
        raise NotImplementedError


@pytest.fixture()
def setup(tiny_seq_dataset, fast_config):
    """Config + dataset + test batch for a 25-item dataset; the table is left to each test."""
    root = tiny_seq_dataset("tiny", n_items=25)
    params = {**fast_config, "data_path": str(root), "beam_size": 20, "state": "ERROR"}
    config = build_config(FixedTableGenerator, "tiny", config_dict=params)
    train, _, test = data_preparation(config, create_dataset(config))
    return config, train._dataset, next(iter(test))[0]


def table_for(dataset, seed: int = 0) -> SemanticIDTable:
    return SemanticIDTable.from_padded(unique_table(dataset.item_num - 1, N_LEVELS, N_CODES, seed))


def test_code_token_layout_comes_from_the_table(setup):
    config, dataset, _ = setup
    config["semantic_id_table"] = table = table_for(dataset)
    model = FixedTableGenerator(config, dataset)
    offsets = [3 + int(o) for o in table.level_offsets]
    assert model.token_offsets == offsets
    assert torch.equal(model.item_tokens[1:], torch.tensor(table.table[1:]) + torch.tensor(offsets))
    assert (model.item_tokens[0] == 0).all()


def test_exhaustive_beam_equals_predict_for_every_item(setup):
    """beam >= catalogue: full_sort_predict scores every item exactly as teacher-forced predict."""
    config, dataset, batch = setup
    config["semantic_id_table"] = table_for(dataset)
    config["beam_size"] = 40
    model = FixedTableGenerator(config, dataset).eval()
    users = batch[:6]
    dense = model.full_sort_predict(users)
    expanded = users.repeat_interleave(model.n_items - 1)
    expanded.update(type(users)({model.ITEM_ID: torch.arange(1, model.n_items).repeat(len(users))}))
    oracle = model.predict(expanded).view(len(users), -1)
    assert torch.isinf(dense[:, 0]).all()
    torch.testing.assert_close(dense[:, 1:], oracle)


def test_chunked_decoding_matches_one_batch(setup):
    config, dataset, batch = setup
    config["semantic_id_table"] = table_for(dataset)
    whole = FixedTableGenerator(config, dataset).eval()
    config["decode_batch_size"] = 3
    chunked = FixedTableGenerator(config, dataset).eval()
    users = batch[:10]
    expected = whole.full_sort_predict(users)
    assert torch.equal(chunked.full_sort_predict(users), expected)
    assert chunked.steppers_made == 4  # ceil(10 / 3) decodes
    assert (torch.isfinite(expected).sum(1) == 20).all()  # beam_size items per user


def test_missing_or_wrong_table_is_a_clear_error(setup):
    config, dataset, _ = setup
    with pytest.raises(ValueError, match=r"needs config\['semantic_id_table'\].*resolve_stages"):
        FixedTableGenerator(config, dataset)
    config["semantic_id_table"] = unique_table(dataset.item_num - 1, N_LEVELS, N_CODES, 0)
    with pytest.raises(TypeError, match="must be a SemanticIDTable"):
        FixedTableGenerator(config, dataset)
    config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(dataset.item_num - 3, N_LEVELS, N_CODES, 0))
    with pytest.raises(ValueError, match="rebuild it for this dataset"):
        FixedTableGenerator(config, dataset)


def test_beam_smaller_than_topk_is_refused(setup):
    config, dataset, _ = setup
    config["semantic_id_table"] = table_for(dataset)
    config["beam_size"] = 19
    with pytest.raises(ValueError, match=r"beam_size=19 < max\(topk\)=20"):
        FixedTableGenerator(config, dataset)


def test_missing_key_names_the_yaml_that_defines_it(setup):
    config, dataset, _ = setup
    config["semantic_id_table"] = table_for(dataset)
    config["decode_batch_size"] = None
    with pytest.raises(ValueError, match="'decode_batch_size' is missing; load properties/model/TIGER.yaml"):
        FixedTableGenerator(config, dataset)


def test_checkpoint_of_another_table_is_refused(setup):
    config, dataset, _ = setup
    config["semantic_id_table"] = table_for(dataset, seed=0)
    state = FixedTableGenerator(config, dataset).state_dict()
    config["semantic_id_table"] = table_for(dataset, seed=1)
    other = FixedTableGenerator(config, dataset)
    with pytest.raises(ValueError, match="different semantic-ID table"):
        other.load_state_dict(state)
    other.load_state_dict(other.state_dict())  # its own table loads


def test_table_pickles_with_a_short_repr():
    """Checkpoints pickle the config, table included; it must come back equal and read-only."""
    table = SemanticIDTable.from_padded(unique_table(500, 3, 16, seed=2))
    back = pickle.loads(pickle.dumps(table))
    assert np.array_equal(back.table, table.table) and back.level_sizes == table.level_sizes
    assert not back.table.flags.writeable
    assert repr(back) == repr(table) and len(repr(table)) < 80


def test_padded_table_is_checked():
    with pytest.raises(ValueError, match="row 0"):
        SemanticIDTable.from_padded(np.array([[0, 1], [1, 1]]))
    with pytest.raises(ValueError, match="expected \\[n_items \\+ 1, n_levels\\]"):
        SemanticIDTable.from_padded(np.array([-1, 0, 1]))


def test_resolve_stages_keeps_a_given_table_and_rejects_unknown_stages(setup):
    config, dataset, _ = setup
    config["semantic_id_table"] = given = table_for(dataset)
    resolve_stages(FixedTableGenerator, config, dataset)  # would fit a tokenizer if it ran the stage
    assert config["semantic_id_table"] is given

    class NeedsMagic(FixedTableGenerator):
        required_stages = ("magic",)

    with pytest.raises(ValueError, match="requires the stage 'magic', which is unknown"):
        resolve_stages(NeedsMagic, config, dataset)


def test_large_evaluation_matrices_are_announced(setup, caplog, monkeypatch):
    """RecBole's full-sort batch needs [eval_batch_size, n_items] scores + a hit matrix: warn when big."""
    from recbole_letter.model import base

    config, dataset, _ = setup
    config["semantic_id_table"] = table_for(dataset)
    with caplog.at_level("WARNING", logger="recbole_letter"):
        FixedTableGenerator(config, dataset)
    assert "full-sort evaluation holds" not in caplog.text
    needed = 8 * config["eval_batch_size"] * dataset.item_num
    monkeypatch.setattr(base, "EVAL_MATRIX_WARN_BYTES", needed - 1)
    with caplog.at_level("WARNING", logger="recbole_letter"):
        FixedTableGenerator(config, dataset)
    assert "full-sort evaluation holds" in caplog.text and "lower eval_batch_size" in caplog.text


# ----------------------------------------------------------------------------- new and cold-start items
def free_tuples(table: SemanticIDTable, n: int) -> np.ndarray:
    used = {tuple(row) for row in table.table[table.assigned].tolist()}
    free = [(a, b) for a in range(N_CODES) for b in range(N_CODES) if (a, b) not in used]
    return np.array(free[:n])


def test_cold_items_are_not_recommended_until_given_codes(setup):
    config, dataset, batch = setup
    padded = np.array(table_for(dataset).table)
    cold = np.array([3, 7])
    padded[cold] = -1
    table = SemanticIDTable.from_padded(padded, level_sizes=[N_CODES, N_CODES], allow_unassigned=True)
    config["semantic_id_table"] = table
    config["beam_size"] = 40  # exhaustive: every item with a code is scored
    model = FixedTableGenerator(config, dataset).eval()
    users = batch[:4]
    before = model.full_sort_predict(users)
    assert torch.isinf(before[:, cold]).all() and torch.isfinite(before[:, 1:]).sum() == 4 * (model.n_items - 3)
    assert (model.item_tokens[cold] == 0).all()  # no code yet -> padding token in histories

    codes = free_tuples(table, 2)
    assert model.add_items(codes, item_ids=cold).tolist() == cold.tolist()
    after = model.full_sort_predict(users)
    assert torch.isfinite(after[:, 1:]).all()
    keep = np.setdiff1d(np.arange(1, model.n_items), cold)
    assert torch.equal(after[:, keep], before[:, keep])  # the network did not change
    assert np.array_equal(model.id_table.table[keep], table.table[keep])
    assert torch.equal(model.semantic_ids[cold], torch.as_tensor(codes))
    with pytest.raises(ValueError, match="already have codes"):
        model.add_items(free_tuples(model.id_table, 1), item_ids=[3])
    with pytest.raises(ValueError, match="share a code tuple"):
        model.add_items(model.id_table.table[[1]], item_ids=None)


def test_appended_items_extend_the_full_sort_scores(setup):
    config, dataset, batch = setup
    config["semantic_id_table"] = table = table_for(dataset)
    config["beam_size"] = 40
    model = FixedTableGenerator(config, dataset).eval()
    n_before = model.n_items
    ids = model.add_items(free_tuples(table, 3))
    assert ids.tolist() == [n_before, n_before + 1, n_before + 2] and model.n_items == n_before + 3
    scores = model.full_sort_predict(batch[:5])
    assert scores.shape == (5, n_before + 3)
    assert torch.isfinite(scores[:, ids]).all()  # the new items are recommendable
    assert np.array_equal(model.id_table.table[:n_before], table.table)  # no existing code changed
    with pytest.raises(ValueError, match="outside|codebook size"):
        model.add_items(np.array([[N_CODES, 0]]))  # a code the generator has no token for
