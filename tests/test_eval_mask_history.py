"""``eval_mask_history``: sequential models' full-sort rankings leave out the user's earlier items.

The expected sets are read from the raw ``.inter`` file (each user's items by time: everything
before the validation target at validation, before the test target at test), independently of
the loaders under test; the scores are the ones RecBole's ``Trainer._full_sort_batch_eval`` (which
every trainer here uses) hands to the metrics.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_letter import cli
from recbole_letter.compat import load_data_and_model
from recbole_letter.history_mask import MASKED, UNMASKED, history_protocol, mask_history
from recbole_letter.quick_start import build_config, results_table, run_models
from recbole_letter.seeding import capture_rng_state, restore_rng_state
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from conftest import FAST_CONFIG
from decoding import unique_table

# A history window shorter than most users' training items, so "earlier items" is more than the input.
SMALL = {**FAST_CONFIG, "MAX_ITEM_LIST_LENGTH": 3, "state": "ERROR"}
SMALL_T5 = {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "num_heads": 2, "d_kv": 16, "d_ff": 64}


@pytest.fixture(autouse=True)
def _leave_global_rng_as_found():
    """These tests build models and reseed (the runner's init_seed); later test files that draw
    initial weights from the global RNG (test_lcrec's learning test) then see the state they saw
    before this file existed."""
    state = capture_rng_state()
    yield
    restore_rng_state(state)


def _earlier_items(root: Path, name: str = "tiny") -> dict[str, dict[str, list[str]]]:
    """Per user token, the item tokens before the validation and before the test target."""
    rows = (root / name / f"{name}.inter").read_text().splitlines()[1:]
    by_user: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in rows:
        user, item, ts = line.split("\t")
        by_user[user].append((float(ts), item))
    out = {}
    for user, events in by_user.items():
        items = [item for _, item in sorted(events)]
        out[user] = {"valid": items[:-2], "test": items[:-1]}
    return out


def _prepare(root: Path, workdir: Path, model: str, on: bool, **extra):
    config_dict = {"data_path": str(root), "checkpoint_dir": str(workdir / "saved"), **SMALL, **extra}
    config, spec = build_config(model, "tiny", None, {**config_dict, "eval_mask_history": on})
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, spec, dataset, train, valid, test


def _scored(trainer, loader, dataset) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """``(user token, raw scores, scores ranked by RecBole, target)`` per evaluation row."""
    trainer.model.eval()
    trainer.tot_item_num = dataset.item_num
    out = []
    with torch.no_grad():
        for batch in loader:
            interaction = batch[0]
            raw = trainer.model.full_sort_predict(interaction).clone()
            _, ranked, _, positive_i = trainer._full_sort_batch_eval(batch)
            users = dataset.id2token(dataset.uid_field, interaction[dataset.uid_field].numpy())
            out += [(str(u), raw[r], ranked[r], int(positive_i[r])) for r, u in enumerate(users)]
    return out


def _masked_tokens(ranked: torch.Tensor, dataset) -> set[str]:
    columns = torch.nonzero(torch.isneginf(ranked)).flatten()
    columns = columns[columns != 0]  # padding is always -inf
    return set(dataset.id2token(dataset.iid_field, columns.numpy()).tolist())


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
def test_sasrec_masks_exactly_the_earlier_items_at_valid_and_test(tiny_seq_dataset, workdir, on):
    root = tiny_seq_dataset()
    config, spec, dataset, train, valid, test = _prepare(root, workdir, "SASRec", on)
    assert mask_history(config, train, valid, test) is on
    expected = _earlier_items(root)
    trainer = spec.trainer_class(config, spec.model_class(config, train._dataset))
    for phase, loader in (("valid", valid), ("test", test)):
        assert history_protocol(loader) == (MASKED if on else UNMASKED)
        rows = _scored(trainer, loader, dataset)
        assert len(rows) == len(expected)
        for user, raw, ranked, target in rows:
            assert torch.isfinite(raw[1:]).all()  # SASRec scores every item: only the mask makes -inf
            assert torch.isfinite(ranked[target])
            masked = _masked_tokens(ranked, dataset)
            assert masked == (set(expected[user][phase]) if on else set()), (phase, user)
        # more than the input window: items older than MAX_ITEM_LIST_LENGTH are masked too
        assert max(len(expected[u][phase]) for u in expected) > SMALL["MAX_ITEM_LIST_LENGTH"]


def test_a_repeated_target_stays_rankable(workdir):
    """As RecBole does for general models (``used - positive``): when the target itself is among
    the user's earlier items (a re-purchase), it is not masked; the other earlier items are."""
    root = workdir / "data"
    (root / "tiny").mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, 31):
        items = [(user + k) % 12 + 1 for k in range(6)] + [user % 12 + 1]  # the test target repeats the first item
        lines += [f"{user}\t{item}\t{1000 * user + t}" for t, item in enumerate(items)]
    (root / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")
    config, spec, dataset, train, valid, test = _prepare(root, workdir, "SASRec", True)
    mask_history(config, train, valid, test)
    expected = _earlier_items(root)
    trainer = spec.trainer_class(config, spec.model_class(config, train._dataset))
    for user, _raw, ranked, target in _scored(trainer, test, dataset):
        target_token = dataset.id2token(dataset.iid_field, target)
        assert target_token in expected[user]["test"] and torch.isfinite(ranked[target])
        assert _masked_tokens(ranked, dataset) == set(expected[user]["test"]) - {target_token}


def test_tiger_beam_history_items_are_masked_through_the_generative_trainer(tiny_seq_dataset, workdir, caplog):
    """TIGER's beam (scores for its items, -inf elsewhere) recommends history items; with the
    option on they are -inf in what the GenerativeTrainer ranks, and never without it."""
    root = tiny_seq_dataset()
    expected = _earlier_items(root)
    for on in (True, False):
        config, spec, dataset, train, valid, test = _prepare(root, workdir, "TIGER", on, **SMALL_T5)
        mask_history(config, train, valid, test)
        config["semantic_id_table"] = SemanticIDTable.from_padded(unique_table(dataset.item_num - 1, 3, 8, seed=0))
        trainer = spec.trainer_class(config, spec.model_class(config, train._dataset))
        assert "GenerativeTrainer" in [c.__name__ for c in type(trainer).__mro__]
        for phase, loader in (("valid", valid), ("test", test)):
            recommended_history = 0
            for user, raw, ranked, _target in _scored(trainer, loader, dataset):
                history = dataset.token2id(dataset.iid_field, expected[user][phase])
                recommended_history += int(torch.isfinite(raw[history]).sum())
                kept = torch.isfinite(ranked[history])
                if on:
                    assert not kept.any(), (phase, user)
                else:
                    assert torch.equal(kept, torch.isfinite(raw[history]))
            assert recommended_history > 0  # the beam did put history items forward
        # the trainer says when the mask left users short of max(topk) ranked items (20 here: all are)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            trainer.evaluate(test, load_best_model=False)
        short = [r.getMessage() for r in caplog.records if "after the history mask" in r.getMessage()]
        assert len(short) == (1 if on else 0)
        if on:
            assert short[0].startswith(f"{len(expected)} of {len(expected)} users") and "beam_size=20" in short[0]


def test_runner_records_the_protocol_pop_is_unchanged_and_checkpoints_keep_it(
    tiny_seq_dataset, workdir, caplog
):
    root = tiny_seq_dataset()
    base = {"data_path": str(root), "checkpoint_dir": str(workdir / "saved"), **SMALL}
    runs = {}
    for on in (False, True):
        with caplog.at_level(logging.WARNING, logger="recbole_letter"):
            caplog.clear()
            results, path = run_models(["Pop", "SASRec"], "tiny", None, {**base, "eval_mask_history": on})
            mixed_warning = "rows differ in the 'history' column" in caplog.text
        runs[on] = {r["model"]: r for r in json.loads(path.read_text())["results"]}
        table = results_table(results).splitlines()
        header = [c.strip() for c in table[0].strip("|").split("|")]
        history = {line.split("|")[1].strip(): line.split("|")[header.index("history") + 1].strip() for line in table[2:]}
        assert history == {"Pop": "masked", "SASRec": "masked" if on else "not masked"}
        assert mixed_warning is not on
    assert runs[False]["Pop"]["protocol"] == runs[True]["Pop"]["protocol"] == MASKED
    assert runs[False]["SASRec"]["protocol"] == UNMASKED and runs[True]["SASRec"]["protocol"] == MASKED
    # Pop: RecBole masks general models already, the option changes nothing
    for key in ("test_result", "best_valid_result"):
        assert runs[True]["Pop"][key] == runs[False]["Pop"][key]
    # a reloaded checkpoint evaluates under the protocol it was trained with
    for on in (False, True):
        *_, valid, test = load_data_and_model(runs[on]["SASRec"]["checkpoint"], log=False)
        assert history_protocol(valid) == history_protocol(test) == (MASKED if on else UNMASKED)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--eval_mask_history=maybe"], "eval_mask_history"),
        (["--eval_mask_history=True", "--eval_args={'split': {'LS': 'valid_and_test'}, 'order': 'TO', "
          "'group_by': 'user', 'mode': 'uni100'}"], "mode: full"),
    ],
    ids=["not-a-bool", "sampled-evaluation"],
)
def test_bad_option_is_refused_before_anything_runs(tiny_seq_dataset, workdir, capsys, flags, needle):
    root = tiny_seq_dataset()
    saved = workdir / "saved"
    code = cli.main(
        ["--model=SASRec", "--dataset=tiny", f"--data_path={root}", f"--checkpoint_dir={saved}", "--epochs=1", *flags]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and needle in err and "eval_mask_history" in err
    assert not saved.exists() or not any(p.is_file() for p in saved.rglob("*"))
