"""STORE on the tiny-random Llama: text -> token learning, new items, task switches, the CLI.

Each test writes a small atomic dataset under ``tmp_path``; all but the CLI test hand the model
its code table directly as ``config["semantic_id_table"]`` (what the runner's stages do).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401  (RecBole shims first)
from recbole.config import Config
from recbole.data import create_dataset, data_preparation

from recbole_letter import cli
from recbole_letter.model.lcrec import LCRecTrainer
from recbole_letter.model.store import STORE, STORE_TASKS
from recbole_letter.tokenization.semantic_ids import SemanticIDTable
from run_settings import leave_one_out_full_sort

REPO = Path(__file__).resolve().parents[1]
MODEL_YAMLS = [str(Path(__file__).resolve().parents[1] / "properties" / "model" / f"{m}.yaml") for m in ("LCRec", "STORE")]
DATASET = "catalogue"
SIZES = [10, 10]  # two code levels, ten codes each: the title "alpha 3 beta 7" names the code (3, 7)
WEIGHTS_OFF = {f"{task}_weight": 0.0 for task in STORE_TASKS}


def title_of(code) -> str:
    return f"alpha {code[0]} beta {code[1]}"


def write_catalogue(root: Path, codes: np.ndarray, n_users: int = 60, seed: int = 0) -> Path:
    """Items ``i<k>`` whose titles name their codes; users walk the catalogue at random."""
    rng = np.random.default_rng(seed)
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        items = rng.choice(len(codes), size=int(rng.integers(5, 8)), replace=False)
        lines += [f"u{user}\ti{item}\t{1000 * user + t}" for t, item in enumerate(items)]
    (folder / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    rows = ["item_id:token\ttitle:token_seq"] + [f"i{k}\t{title_of(c)}" for k, c in enumerate(codes)]
    (folder / f"{DATASET}.item").write_text("\n".join(rows) + "\n")
    return root


def split_codes(n_known: int, n_new: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    every = np.array([(a, b) for a in range(SIZES[0]) for b in range(SIZES[1])])
    order = np.random.default_rng(seed).permutation(len(every))
    return every[order[:n_known]], every[order[n_known : n_known + n_new]]


@pytest.fixture(autouse=True)
def _isolated(workdir):
    """RecBole writes ./log and ./saved: run every test in its own directory (conftest's ``workdir``;
    conftest also hides pytest's argv from RecBole and pins one torch thread)."""


def build(tmp_path: Path, known: np.ndarray, unassigned: Sequence[int] = (), **overrides):
    """STORE over a catalogue of ``known`` codes (item ``i<k>`` has ``known[k]``); ``unassigned``
    internal ids get no code (cold-start items)."""
    data_path = write_catalogue(tmp_path / "data", known)
    config_dict = {
        "data_path": str(data_path),
        **leave_one_out_full_sort(),
        "MAX_ITEM_LIST_LENGTH": 3,
        "topk": [1, 5],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "NDCG@5",
        "llm_path": "tiny-random",
        "beam_size": 5,
        "decode_batch_size": 64,
        "eval_batch_size": 256,
        "epochs": 1,
        "seed": 7,
        "checkpoint_dir": str(tmp_path / "saved"),
    }
    config_dict.update(overrides)
    config = Config(model=STORE, dataset=DATASET, config_file_list=MODEL_YAMLS, config_dict=config_dict)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    ds = train_data._dataset
    table = np.full((ds.item_num, 2), -1, dtype=np.int64)
    table[1:] = known[[int(t[1:]) for t in item_tokens(ds, range(1, ds.item_num))]]
    table[list(unassigned)] = -1
    config["semantic_id_table"] = SemanticIDTable.from_padded(table, level_sizes=SIZES, allow_unassigned=True)
    return config, STORE(config, ds), train_data, test_data


def item_tokens(dataset, ids) -> list[str]:
    return [str(t) for t in dataset.id2token(dataset.iid_field, np.asarray(list(ids)))]


def test_text_to_token_learns_codes_named_by_titles(tmp_path):
    """Trained only on text -> token over the catalogue, STORE writes the right codes for *new* titles.

    The answer is read with ``unique=False`` (the model's own best tuple, no exclusion of taken
    tuples), so the accuracy is the model's, not an artefact of a nearly full code space. Copying
    a digit from the title into a code token is a sudden transition for the random tiny Llama:
    untied embeddings (as LLaMA-7B) and full fine-tuning make it at ~200 updates (seeds 7, 8, 9
    all at 1.0 by 250 updates); the test gives it 280.
    """
    known, new = split_codes(60, 20)
    config, model, train_data, _ = build(
        tmp_path, known, **{**WEIGHTS_OFF, "text2token_weight": 1.0}, finetune="full", learning_rate=2e-3,
        llm_tiny_config={"tie_word_embeddings": False}, train_batch_size=16, gradient_accumulation_steps=1,
        lr_scheduler="none", warmup_steps=0, epochs=28, train_batches_per_epoch=10, eval_step=1000,
    )
    trainer = LCRecTrainer(config, model)
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    codes, scores = model.generate_codes([{"title": title_of(c)} for c in new], unique=False)
    accuracy = float((codes == new).all(axis=1).mean())
    assert accuracy >= 0.9, (accuracy, codes.tolist(), new.tolist())
    assert np.isfinite(scores).all()


def test_new_items_become_recommendable_and_no_existing_code_changes(tmp_path):
    known, new = split_codes(30, 4)
    cold = [2, 5]  # dataset items the tokenizer "never saw": no code until STORE writes one
    _, model, train_data, test_data = build(tmp_path, known, unassigned=cold, beam_size=40)
    model.eval()
    users = next(iter(test_data))[0][:6]
    before_table = model.id_table.table.copy()
    before = model.full_sort_predict(users)
    assert torch.isinf(before[:, cold]).all()  # not recommendable yet

    cold_titles = [{"title": title_of(known[int(t[1:])])} for t in item_tokens(train_data._dataset, cold)]
    _, ids = model.tokenize_new_items(cold_titles, item_ids=cold)
    assert ids.tolist() == cold
    n_old = model.n_items
    _, new_ids = model.tokenize_new_items([{"title": title_of(c)} for c in new])
    assert new_ids.tolist() == list(range(n_old, n_old + len(new)))

    after = model.full_sort_predict(users)
    assert after.shape == (6, n_old + len(new))
    assert torch.isfinite(after[:, cold]).all() and torch.isfinite(after[:, new_ids]).all()  # beam covers every item
    warm = [i for i in range(1, len(before_table)) if i not in cold]
    assert np.array_equal(model.id_table.table[warm], before_table[warm])  # no existing code changed
    every = model.id_table.table[1:]
    assert len({tuple(r) for r in every.tolist()}) == len(every)  # all tuples distinct
    assert (every < np.array(SIZES)).all()  # only codes the LLM has tokens for
    assert model.item_codes.strings[cold[0]].startswith("<a_")  # prompts can now write the cold item


@pytest.mark.parametrize("task", list(STORE_TASKS))
def test_each_task_can_be_switched_off(tmp_path, task):
    known, _ = split_codes(30, 0)
    weights = {f"{t}_weight": 1.0 for t in STORE_TASKS}
    weights[f"{task}_weight"] = 0.0
    _, model, train_data, _ = build(tmp_path, known, **weights)
    drawn: dict[str, int] = {}
    draw, seqrec = model.sampler.draw_task, model.seqrec_prompts

    def spy_draw(name, n):
        samples = draw(name, n)
        drawn[name] = drawn.get(name, 0) + len(samples)
        return samples

    def spy_seqrec(rows, prompt_id):
        prompts = seqrec(rows, prompt_id)
        drawn["seqrec"] = drawn.get("seqrec", 0) + len(prompts)
        return prompts

    model.sampler.draw_task, model.seqrec_prompts = spy_draw, spy_seqrec
    batch = next(iter(train_data))[: 16]
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert drawn.get(STORE_TASKS[task], 0) == 0
    for other in STORE_TASKS:
        if other != task:  # weight 1.0: about one sample per row
            assert drawn.get(STORE_TASKS[other], 0) >= 8, (other, drawn)


def test_task_weights_are_checked(tmp_path):
    known, _ = split_codes(30, 0)
    with pytest.raises(ValueError, match="every STORE task weight is 0"):
        build(tmp_path, known, **WEIGHTS_OFF)
    with pytest.raises(ValueError, match="text2token_weight must be a number >= 0"):
        build(tmp_path, known, text2token_weight=-1)
    with pytest.raises(ValueError, match="at most 1"):
        build(tmp_path, known, token2token_weight=2.0)
    # a share below 1 uses that share of the batch's rows as history -> next-item prompts
    _, model, train_data, _ = build(tmp_path, known, **{**WEIGHTS_OFF, "token2token_weight": 0.5}, train_batch_size=64)
    batch = next(iter(train_data))
    prompts, responses = model.training_samples(batch)
    assert 0.25 * len(batch) <= len(prompts) <= 0.75 * len(batch)
    targets = {tuple(model.item_tokens[i].tolist()) for i in batch[model.POS_ITEM_ID].tolist()}
    assert all(tuple(r[:-1]) in targets for r in responses)  # each answer is one of the batch's next items


def cli_args(root: Path, saved: Path) -> list[str]:
    """A tiny but complete STORE run: tiny-random LLM embeddings -> 2x8 RQ-VAE -> 3 training batches."""
    return [
        "--model=STORE", f"--dataset={DATASET}", f"--data_path={root}", f"--checkpoint_dir={saved}",
        "--llm_path=tiny-random", "--epochs=1", "--train_batches_per_epoch=3", "--train_batch_size=8",
        "--num_levels=2", "--codebook_size=8", "--code_dim=8", "--tokenizer_hidden_dims=[32]", "--tokenizer_epochs=3",
        "--MAX_ITEM_LIST_LENGTH=3", "--eval_batch_size=256", "--show_progress=False", "--state=ERROR",
    ]


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python run_recbole_letter.py ...`` in a fresh process, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "run_recbole_letter.py"), *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=900)


def test_cli_end_to_end_tokenizes_new_items_into_the_index(tmp_path):
    """The whole STORE pipeline through ``run_recbole_letter.py``: the tiny LLM embeds the item
    text (text_encoder: llm), RQ-VAE quantises it, STORE trains and is evaluated, and --new_items
    writes codes for items of another .item file next to every existing item's unchanged codes."""
    known, new = split_codes(30, 3)
    root = write_catalogue(tmp_path / "data", known)
    new_file = tmp_path / "new.item"
    new_file.write_text("item_id:token\ttitle:token_seq\n" + "".join(f"n{k}\t{title_of(c)}\n" for k, c in enumerate(new)))
    saved = tmp_path / "saved"
    proc = run_script(cli_args(root, saved) + [f"--new_items={new_file}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("test results", 1)[1]
    assert "| STORE |" in table and "error" not in table.split("best validation", 1)[0]
    # the stage used the LLM encoder and the quantiser, and published the catalogue's codes
    assert list((saved / "stages" / "text_embeddings").glob("*/embeddings.npy"))
    fitted = json.loads(next((saved / "stages" / "tokenizer").glob("*/index.json")).read_text())
    written = json.loads((saved / f"{DATASET}.STORE.index.json").read_text())
    assert set(written) == set(fitted) | {f"n{k}" for k in range(len(new))}
    assert all(written[item] == fitted[item] for item in fitted)  # no existing code changed
    tuples = [tuple(v) for v in written.values()]
    assert len(set(tuples)) == len(tuples)  # new items got free tuples
    first = next(iter(fitted.values()))
    assert all(len(written[f"n{k}"]) == len(first) for k in range(len(new)))
    results = json.loads(next((saved / "results").glob("*.json")).read_text())["results"][0]
    assert results["outputs"] == {"new_items_index": str(saved / f"{DATASET}.STORE.index.json"), "cold_items": 0, "new_items": 3}


BAD_NEW_ITEMS = {
    "missing file": (None, "is not a file"),
    "no title column": ("item_id:token\tgenre:token\nn0\tdrama\n", "none of the title columns"),
    "no id column": ("title:token_seq\nalpha 1 beta 1\n", "has no item_id column"),
    "already in the dataset": ("item_id:token\ttitle:token_seq\nn0\talpha 1 beta 2\ni3\talpha 9 beta 9\n",
                               "['i3'] (1 in all) are already in the dataset"),
    "listed twice": ("item_id:token\ttitle:token_seq\nn0\talpha 1 beta 2\nn0\talpha 1 beta 3\n", "twice"),
    "no text": ("item_id:token\ttitle:token_seq\nn0\t \nn1\talpha 1 beta 3\n", "['n0'] have an empty title"),
    "no rows": ("item_id:token\ttitle:token_seq\n", "lists no item"),
}


@pytest.mark.parametrize("case", sorted(BAD_NEW_ITEMS))
def test_bad_new_items_file_is_a_clean_error_before_any_work(tmp_path, capsys, case):
    known, _ = split_codes(30, 0)
    root = write_catalogue(tmp_path / "data", known)
    content, needle = BAD_NEW_ITEMS[case]
    new_file = tmp_path / "new.item"
    if content is not None:
        new_file.write_text(content)
    saved = tmp_path / "saved"
    code = cli.main(cli_args(root, saved) + [f"--new_items={new_file}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "new_items=" in err and "Fix:" in err, err
    assert err.strip().startswith("error:") and "Traceback" not in err
    assert not (saved / "stages").exists()  # rejected before any stage or training ran


def test_token_to_text_writes_text_not_codes(tmp_path):
    known, _ = split_codes(30, 0)
    _, model, _, _ = build(tmp_path, known, store_text_max_tokens=6, llm_tiny_config={"tie_word_embeddings": False})
    with torch.no_grad():  # push the code-token rows up: untrained, they would dominate every answer
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    texts = model.generate_text([1, 4, 9])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert not any("<a_" in t or "<b_" in t for t in texts)
    assert texts == model.generate_text([1, 4, 9])  # greedy: deterministic
    with pytest.raises(ValueError, match="no index2item template answers with just"):
        model.generate_text([1], field="brand")
