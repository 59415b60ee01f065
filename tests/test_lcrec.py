"""LCRec as a RecBole model, on the tiny-random Llama: decoding exactness, learning, checkpoints, CLI.

Each test writes a tiny atomic dataset under ``tmp_path`` and hands the model a random unique
code table as ``config["semantic_id_table"]`` (what the runner's stage resolution does).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401  (RecBole shims first)
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_letter import cli
from recbole_letter.llm.batching import IGNORE_INDEX, encode_training
from recbole_letter.model.lcrec import LCRec, LCRecTrainer
from recbole_letter.tokenization.semantic_ids import SemanticIDTable, export_index_json
from decoding import unique_table
from run_settings import leave_one_out_full_sort

LCREC_YAML = Path(__file__).resolve().parents[1] / "properties" / "model" / "LCRec.yaml"
DATASET = "ring"
N_ITEMS = 30


def write_ring_dataset(root: Path, n_items: int = N_ITEMS, n_users: int = 120, seed: int = 0) -> Path:
    """Users walk the item ring i -> i+1 (mod n_items) from a random start: the next item is a rule."""
    rng = np.random.default_rng(seed)
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        start, length = rng.integers(n_items), rng.integers(5, 8)
        lines += [f"u{user}\ti{(start + t) % n_items}\t{1000 * user + t}" for t in range(length)]
    (folder / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"] + [f"i{i}\tthing number {i}" for i in range(n_items)]
    (folder / f"{DATASET}.item").write_text("\n".join(items) + "\n")
    return root


@pytest.fixture(autouse=True)
def _isolated(workdir):
    """RecBole writes ./log and ./saved: run every test in its own directory (conftest's ``workdir``;
    conftest also hides pytest's argv from RecBole and pins one torch thread)."""


def make_config(tmp_path: Path, n_users: int = 120, **overrides) -> Config:
    data_path = write_ring_dataset(tmp_path / "data", n_users=n_users)
    config_dict = {
        "data_path": str(data_path),
        **leave_one_out_full_sort(),
        "MAX_ITEM_LIST_LENGTH": 4,
        "topk": [1, 5, 10],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "NDCG@10",
        "llm_path": "tiny-random",
        "lcrec_tasks": "seqrec",
        "beam_size": 10,
        "decode_batch_size": 64,
        "eval_batch_size": 256,
        "epochs": 1,
        "seed": 7,
        "checkpoint_dir": str(tmp_path / "saved"),
    }
    config_dict.update(overrides)
    return Config(model=LCRec, dataset=DATASET, config_file_list=[str(LCREC_YAML)], config_dict=config_dict)


def build(tmp_path: Path, n_users: int = 120, **overrides):
    config = make_config(tmp_path, n_users=n_users, **overrides)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    table = unique_table(train_data._dataset.item_num - 1, 3, 4, seed=int(config["seed"]))
    config["semantic_id_table"] = SemanticIDTable.from_padded(table)
    init_seed(config["seed"], True)  # as the runner does: the model's initial weights follow the seed, not earlier tests
    model = LCRec(config, train_data._dataset)
    return config, model, train_data, valid_data, test_data


def perturb_trainable(model: LCRec, seed: int = 0, scale: float = 0.3) -> None:
    """Move LoRA / new rows away from their init so scores have no ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * scale)


def test_beam_over_all_items_equals_exhaustive_teacher_forced_predict(tmp_path):
    _, model, _, _, test_data = build(tmp_path, beam_size=N_ITEMS)
    perturb_trainable(model)
    model.eval()
    interaction = next(iter(test_data))[0][:6]
    items, scores = model.beam_search(interaction)
    n_users, n_items = len(interaction), model.n_items
    expanded = interaction.repeat_interleave(n_items - 1)
    expanded.update(type(interaction)({model.ITEM_ID: torch.arange(1, n_items).repeat(n_users)}))
    with torch.no_grad():
        oracle = model.predict(expanded).view(n_users, n_items - 1)
    for row in range(n_users):
        order = torch.argsort(oracle[row], descending=True)
        assert items[row].tolist() == (order + 1).tolist()
        assert torch.allclose(scores[row], oracle[row][order], atol=1e-4)


def test_full_sort_returns_only_real_items_and_masks_prompts(tmp_path):
    _, model, train_data, _, test_data = build(tmp_path)
    model.eval()
    interaction = next(iter(test_data))[0]
    dense = model.full_sort_predict(interaction)
    assert dense.shape == (len(interaction), model.n_items)
    top = dense.topk(10, dim=1)
    assert torch.isfinite(top.values).all()  # beam_size 10 items found, every one real
    assert (top.indices >= 1).all() and (top.indices < model.n_items).all()
    assert torch.isneginf(dense[:, 0]).all()
    # training rows: labels are exactly the target's code tokens + EOS, prompt columns ignored
    batch = next(iter(train_data))
    prompts = model.seqrec_prompts(batch, prompt_id=0)
    targets = batch[model.POS_ITEM_ID]
    responses = [model.item_codes.response(int(t)) for t in targets]
    encoded = encode_training(model.tokenizer, prompts, responses)
    assert encoded.labels.shape[1] == model.n_levels + 1
    assert torch.equal(encoded.labels[:, :-1], model.item_tokens[targets])
    assert (encoded.labels[:, -1] == model.tokenizer.eos_token_id).all()
    assert int((encoded.labels == IGNORE_INDEX).sum()) == 0


SHORT_TEMPLATES = "wrapper: '{instruction}='\ntasks:\n  seqrec:\n" + "".join(
    f"    - {{instruction: '{p}{{history}}', response: '{{item}}'}}\n" for p in ["", "h ", "n ", "x ", "y ", "z ", "q ", "r ", "s ", "t "]
)


@pytest.mark.parametrize("seed", [7, 0])  # seeds 1, 2, 3 pass too (checked); two keep the suite short
def test_learns_the_next_item_rule(tmp_path, seed):
    """Item i is always followed by i+1: LoRA on the tiny Llama must reach Recall@1 >= 0.9 through RecBole.

    Short templates (a templates file of our own) keep the byte-level prompts short; the tiny
    Llama is untied here (as LLaMA-7B): with a tied head it takes several times more steps to leave
    the unigram plateau on this task.
    """
    templates = tmp_path / "short.yaml"
    templates.write_text(SHORT_TEMPLATES)
    config, model, train_data, _, test_data = build(
        tmp_path, n_users=240, epochs=20, learning_rate=3e-3, train_batch_size=32, gradient_accumulation_steps=1,
        warmup_steps=5, eval_step=100, lcrec_templates_file=str(templates),
        llm_tiny_config={"tie_word_embeddings": False}, seed=seed,
    )
    assert model.finetune == "lora"
    trainer = LCRecTrainer(config, model)
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    result = trainer.evaluate(test_data, load_best_model=False)
    assert result["recall@1"] >= 0.9, result


def test_checkpoint_holds_only_trained_tensors_and_reloads(tmp_path):
    _, model, _, _, test_data = build(tmp_path)
    perturb_trainable(model)
    state = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == {f"{n}" for n in trainable} | {"semantic_ids", "backbone_signature"}
    n_saved = sum(v.numel() for k, v in state.items() if k not in ("semantic_ids", "backbone_signature"))
    n_total = sum(p.numel() for p in model.parameters())
    assert n_saved < n_total / 3
    model.eval()
    interaction = next(iter(test_data))[0][:4]
    before = model.full_sort_predict(interaction)
    torch.save(state, tmp_path / "ckpt.pt")
    _, fresh, _, _, _ = build(tmp_path)  # same seed, same base; adapters at their init
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    fresh.eval()
    assert torch.allclose(fresh.full_sort_predict(interaction), before, atol=1e-5, equal_nan=True)
    with pytest.raises(RuntimeError, match="lacks"):
        fresh.load_state_dict({"semantic_ids": state["semantic_ids"]})
    _, other_base, _, _, _ = build(tmp_path, llm_tiny_config={"initializer_range": 0.05})  # same shapes
    with pytest.raises(ValueError, match="another base LLM"):
        other_base.load_state_dict(torch.load(tmp_path / "ckpt.pt"))


def test_bad_llm_settings_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not 'smollm2', 'tiny-random' or an existing directory"):
        build(tmp_path, llm_path=str(tmp_path / "missing-llm"))
    with pytest.raises(ValueError, match="lcrec_tasks"):
        build(tmp_path, lcrec_tasks="seqrec,chitchat")
    with pytest.raises(ValueError, match="test_prompt_id"):
        build(tmp_path, test_prompt_id=99)


def test_item_tasks_ride_along_with_seqrec_batches(tmp_path):
    _, model, train_data, _, _ = build(tmp_path, lcrec_tasks="seqrec,item2index,index2item,fusionseqrec",
                                       lcrec_task_samples={"fusionseqrec": 10})
    assert set(model.sampler.pools) == {"item2index", "index2item", "fusionseqrec"}
    assert len(model.sampler.pools["item2index"]) == N_ITEMS and len(model.sampler.pools["fusionseqrec"]) == 10
    expected = (2 * N_ITEMS + 10) / len(train_data._dataset.inter_feat)
    assert model.aux_per_row == pytest.approx(expected)
    loss = model.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss) and loss.requires_grad


def test_cli_runs_sasrec_tiger_lcrec_into_one_table(tmp_path, capsys):
    root = write_ring_dataset(tmp_path / "data")
    index = tmp_path / "ring.index.json"
    table = unique_table(N_ITEMS, 3, 4, seed=1)[1:]
    export_index_json(table, [f"i{i}" for i in range(N_ITEMS)], index)
    code = cli.main([
        "--model=SASRec,TIGER,LCRec", f"--dataset={DATASET}", f"--data_path={root}",
        f"--checkpoint_dir={tmp_path / 'saved'}", f"--item_tokenizer={index}", "--llm_path=tiny-random",
        "--lcrec_tasks=seqrec,item2index,index2item", "--epochs=1", "--hidden_size=16", "--inner_size=32",
        "--n_layers=1", "--n_heads=1", "--num_encoder_layers=1", "--num_decoder_layers=1", "--d_model=32",
        "--num_heads=2", "--d_kv=16", "--d_ff=64", "--MAX_ITEM_LIST_LENGTH=4", "--train_batch_size=64",
        "--eval_batch_size=256", "--show_progress=False", "--state=ERROR",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    test_part = out.split("test results", 1)[1]
    rows = [line for line in test_part.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    names = [row.strip("|").split("|")[0].strip() for row in rows[:3]]
    # generators label their rows with the IDs and tau they used (TIGER's label names the index file)
    assert names[0] == "SASRec" and names[1].startswith("TIGER (") and names[2].startswith("LCRec"), names
    assert "error" not in out.split("test results", 1)[1].splitlines()[1]
    saved = sorted((tmp_path / "saved").glob("LCRec-*.pth"))
    assert saved, "LCRec checkpoint written"
    state = torch.load(saved[0], weights_only=False)["state_dict"]
    assert all("lora_" in k or "trainable_tokens" in k or k in ("semantic_ids", "backbone_signature") for k in state)


def test_test_prompt_all_reports_mean_min_max_over_templates(tmp_path):
    templates = tmp_path / "short.yaml"
    templates.write_text(SHORT_TEMPLATES)
    config, model, _, _, test_data = build(tmp_path, test_prompt_id="all", lcrec_templates_file=str(templates))
    perturb_trainable(model)
    assert model.test_prompt_ids == list(range(10))
    trainer = LCRecTrainer(config, model)
    seen = []
    original = model.make_stepper

    def spy(interaction, **options):
        seen.append(model.eval_prompt_id)
        return original(interaction, **options)

    model.make_stepper = spy
    result = trainer.evaluate(test_data, load_best_model=False)
    assert sorted(set(seen)) == list(range(10))
    for metric in ("recall@10", "ndcg@5"):
        assert result[f"{metric}_min"] <= result[metric] <= result[f"{metric}_max"]
    assert model.eval_prompt_id == 0
