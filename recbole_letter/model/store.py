"""STORE (Liu, Zhu, Fan, Zhao, Wu; arXiv 2409.07276): one LLM for semantic tokenization and
generative recommendation, as a small layer on :class:`~recbole_letter.model.lcrec.LCRec`.

STORE drops the separate sub-models of the usual pipeline (a text encoder, a quantiser, a
recommender) for one LLM trained on four generative tasks. Its code is not released and only the
abstract was checked, so every decision below is **our reading**, and each is one flag so an
ablation is one command:

===========================  =======================================  ==========================
STORE task                   here (template task in store_templates)  switch it off
===========================  =======================================  ==========================
text -> token                item text -> its codes (item2index)      ``text2token_weight: 0``
token -> token               history codes -> next codes (seqrec)     ``token2token_weight: 0``
token -> text                codes -> title / description (index2item) ``token2text_weight: 0``
text -> token, auxiliary     history as titles -> next codes          ``titles2token_weight: 0``
                             (fusionseqrec, code answers only)
===========================  =======================================  ==========================

* **The codes come from the same backbone.** ``text_encoder: llm`` (STORE.yaml) embeds each item
  as the backbone's mean-pooled last hidden states, and the tokenizer stage quantises them
  (``item_tokenizer: RQVAE``; LETTER is one flag, ``text_encoder: minilm`` the ablation with a
  separate encoder). We read "one LLM for tokenization" as: the LLM's embedding feeds the
  quantiser, and the text -> token task teaches the LLM to *write* the codes itself.
* **Task mix.** Each ``<task>_weight`` is the number of samples of that task per RecBole
  training row: ``token2token_weight`` (at most 1) is the share of the batch's own rows used as
  history -> next-item prompts, the others draw that many samples per row from their pools.
  Everything goes through one ranking-guided loss (LCRec's).
* **New items without retraining.** :meth:`STORE.tokenize_new_items` generates a new item's codes
  from its text with the text -> token prompt, constrained to any code of level ``l`` at step ``l``
  (:class:`~recbole_letter.generation.code_space.CodeSpaceIndex`: no ID table needed, existing
  tuples excluded); collisions between new items go to the next-best beam
  (:func:`~recbole_letter.generation.new_items.generate_new_codes`). The items are then added
  to the prefix tables (:meth:`add_items`) and become recommendable; no quantiser refit, no
  training step, no existing code changes. ``--new_items=<.item file>`` does this after a run
  and writes ``<checkpoint_dir>/<dataset>.STORE.index.json`` (LETTER / LC-Rec format).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from recbole_letter.data.item_text import read_item_table
from recbole_letter.generation.beam_search import constrained_beam_search
from recbole_letter.generation.causal_lm_stepper import CausalLMBeamStepper
from recbole_letter.generation.code_space import CodeSpaceIndex
from recbole_letter.generation.new_items import generate_new_codes
from recbole_letter.llm.batching import encode_prompts
from recbole_letter.llm.prompts import DEFAULT_TEMPLATES
from recbole_letter.llm.tasks import clean_title, item_text_from_table
from recbole_letter.model.lcrec import LCRec

LOGGER = logging.getLogger("recbole_letter")

STORE_TEMPLATES = DEFAULT_TEMPLATES.parent / "store_templates.yaml"
#: STORE task -> the template task (prompts.TASKS name) that implements it.
STORE_TASKS: dict[str, str] = {
    "token2token": "seqrec",
    "text2token": "item2index",
    "token2text": "index2item",
    "titles2token": "fusionseqrec",
}


def _names(value: Any) -> list[str]:
    return [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]


def read_new_items(item_file: str | Path, config: Any, id_field: str) -> tuple[list[str], list[dict[str, str]]]:
    """Item tokens and ``{"title", "description"}`` texts of a ``--new_items`` atomic ``.item`` file.

    Every way the file can be unusable is a ``ValueError`` / ``FileNotFoundError`` naming the fix,
    raised up front by :meth:`STORE.check_run_inputs` so a bad file never costs a training run.
    """
    path = Path(item_file)
    if not path.is_file():
        raise FileNotFoundError(f"new_items={item_file!r} is not a file; give an atomic .item file with an id and a title column")
    try:
        table, _ = read_item_table(path, sep=config["field_separator"] or "\t")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"new_items={item_file} is not a readable atomic .item file ({err}); write it as {id_field}:token<TAB>title:token_seq") from None
    if id_field not in table.columns:
        raise ValueError(
            f"new_items={item_file} has no {id_field} column (columns: {list(table.columns)}); "
            f"give its header as {id_field}:token<TAB>title:token_seq"
        )
    title_fields = _names(config["lcrec_title_fields"] or [])
    description_fields = _names(config["lcrec_description_fields"] or [])
    tokens = [str(t).strip() for t in table[id_field].tolist()]
    if not tokens:
        raise ValueError(f"new_items={item_file} lists no item; add one row per new item")
    if "" in tokens:
        raise ValueError(f"new_items={item_file}: row {tokens.index('') + 2} has an empty {id_field}; give every item an id")
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise ValueError(f"new_items={item_file} lists items {repeated[:5]} twice; give each new item once")
    text = item_text_from_table(table, tokens, title_fields, description_fields, config["lcrec_text_max_chars"], id_field=id_field)
    if text is None:
        raise ValueError(
            f"new_items={item_file} has none of the title columns {title_fields} or description columns "
            f"{description_fields} (columns: {list(table.columns)}); STORE tokenizes a new item from its text, "
            "add a title column or set lcrec_title_fields"
        )
    fields = [{"title": text.titles[i + 1], "description": text.descriptions[i + 1]} for i in range(len(tokens))]
    empty = [t for t, f in zip(tokens, fields) if not (f["title"] or f["description"])]
    if empty:
        raise ValueError(f"new_items={item_file}: items {empty[:5]} have an empty title and description; give each new item its text")
    return tokens, fields


class STORE(LCRec):
    """One LLM for tokenization and recommendation (see module docstring)."""

    default_config_names = ("LETTER", "LCRec", "STORE")
    default_templates_file = STORE_TEMPLATES

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self._config = config  # read again by tokenize_item_file (item text columns, separator)
        self.tokenize_prompt_id = int(self.require(config, "store_tokenize_prompt_id"))
        if not 0 <= self.tokenize_prompt_id < len(self.templates.templates("item2index")):
            raise ValueError(
                f"store_tokenize_prompt_id={self.tokenize_prompt_id} is not an item2index template of the "
                f"templates file; pick one in [0, {len(self.templates.templates('item2index'))})"
            )
        self.new_item_beam = int(self.require(config, "store_new_item_beam"))
        self.text_max_tokens = int(self.require(config, "store_text_max_tokens"))
        if self.new_item_beam < 1 or self.text_max_tokens < 1:
            raise ValueError("store_new_item_beam and store_text_max_tokens must be >= 1")
        self.text_max_chars = config["lcrec_text_max_chars"]
        self.appended_tokens: list[str] = []  # item tokens of items appended by tokenize_item_file
        idle = [t for t, w in self.task_weights.items() if w > 0 and t != "token2token"
                and STORE_TASKS[t] not in self.sampler.pools]
        if idle:
            LOGGER.warning("STORE tasks %s are on but have no samples (no item text in the .item file?)", idle)
        LOGGER.info("STORE task weights (samples per train row): %s", self.task_weights)

    # ----------------------------------------------------------------- tasks
    def _training_tasks(self, config: Any) -> list[str]:
        """Template tasks of the STORE tasks whose ``<task>_weight`` is > 0."""
        weights: dict[str, float] = {}
        for task in STORE_TASKS:
            value = self.require(config, f"{task}_weight")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{task}_weight must be a number >= 0 (0 switches the task off), got {value!r}")
            weights[task] = float(value)
        if weights["token2token"] > 1:
            raise ValueError(f"token2token_weight is the share of each batch's rows used, at most 1; got {weights['token2token']}")
        if not any(weights.values()):
            raise ValueError("every STORE task weight is 0: switch at least one task on (e.g. token2token_weight: 1.0)")
        self.task_weights = weights
        return [STORE_TASKS[t] for t, w in weights.items() if w > 0]

    def _round(self, expected: float) -> int:
        """Stochastic rounding: the expected number of samples is exact over many batches."""
        return int(expected) + int(self._rng.random() < expected - int(expected))

    def training_samples(self, interaction: Any) -> tuple[list[str], list[list[int] | str]]:
        """The batch's share of history -> next-item rows, plus ``weight x rows`` samples of each other task."""
        n_rows = len(interaction)
        prompts: list[str] = []
        responses: list[list[int] | str] = []
        share = self.task_weights["token2token"]
        if share > 0:
            rows = interaction
            if share < 1:
                keep = np.flatnonzero(self._rng.random(n_rows) < share)
                rows = interaction[torch.as_tensor(keep, dtype=torch.long)] if keep.size else None
            if rows is not None:
                prompts += self.seqrec_prompts(rows, prompt_id=None)
                responses += [self.item_codes.response(t) for t in rows[self.POS_ITEM_ID].cpu().numpy()]
        for task, weight in self.task_weights.items():
            if task == "token2token" or weight == 0:
                continue
            for sample in self.sampler.draw_task(STORE_TASKS[task], self._round(n_rows * weight)):
                prompts.append(sample.prompt)
                responses.append(sample.response)
        if not prompts:  # small weights can round to an empty batch: train on one sample of the largest
            task = max(self.task_weights, key=self.task_weights.get)
            if task == "token2token":
                return self.training_samples(interaction[:1])
            sample = self.sampler.draw_task(STORE_TASKS[task], 1)
            if not sample:
                raise RuntimeError(f"STORE task {task} has no samples; give the .item file text or set {task}_weight: 0")
            prompts, responses = [sample[0].prompt], [sample[0].response]
        return prompts, responses

    # ----------------------------------------------------------------- text -> token for new items
    def item2index_prompts(self, texts: Sequence[Mapping[str, str]]) -> list[str]:
        """text -> token prompts, one per item (``{"title": ..., "description": ...}``).

        Template ``store_tokenize_prompt_id`` is used when the item has the fields it needs,
        otherwise the first item2index template it can fill.
        """
        prompts = []
        for row, fields in enumerate(texts):
            clean = {k: clean_title(v, self.text_max_chars) for k, v in fields.items() if str(v or "").strip()}
            clean = {k: v for k, v in clean.items() if v and k in ("title", "description")}
            usable = self.templates.usable("item2index", set(clean) | {"item"})
            if not usable:
                raise ValueError(
                    f"new item {row} has no title or description: STORE tokenizes an item from its text; "
                    "give it a title (lcrec_title_fields) or description (lcrec_description_fields)"
                )
            prompt_id = self.tokenize_prompt_id if self.tokenize_prompt_id in usable else usable[0]
            prompts.append(self.templates.fill("item2index", prompt_id, {**clean, "item": ""})[0])
        return prompts

    def _prompt_stepper(self, prompts: list[str]):
        def make(rows: Sequence[int]) -> CausalLMBeamStepper:
            batch = encode_prompts(self.tokenizer, [prompts[r] for r in rows]).to(self.device)
            return CausalLMBeamStepper(self.llm, batch)

        return make

    @torch.no_grad()
    def generate_codes(self, texts: Sequence[Mapping[str, str]], unique: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Code tuples STORE writes for items described by ``texts``, and their log-probabilities.

        ``unique=True``: tuples of existing items are excluded and new items never share one (the
        next-best beam resolves collisions), i.e. what :meth:`tokenize_new_items` adds.
        ``unique=False``: the model's single best tuple per item, wherever it lands (to measure
        text -> token accuracy against known codes).
        """
        prompts = self.item2index_prompts(texts)
        was_training = self.training
        self.eval()
        try:
            make = self._prompt_stepper(prompts)
            sizes = list(self.id_table.level_sizes)
            if unique:
                codes, scores, info = generate_new_codes(
                    make, len(prompts), sizes, self.token_offsets, self.id_table.table,
                    self.new_item_beam, self.decode_batch_size,
                )
                LOGGER.info(
                    "STORE tokenized %d new items (%d took a next-best beam, %d re-decoded)",
                    len(prompts), info["moved_to_next_beam"], info["redecoded"],
                )
                return codes, scores
            index = CodeSpaceIndex(sizes).to(self.device)
            codes, scores = [], []
            for start in range(0, len(prompts), self.decode_batch_size):
                rows = list(range(start, min(start + self.decode_batch_size, len(prompts))))
                flat, score = constrained_beam_search(make(rows), index, self.token_offsets, self.new_item_beam)
                codes.append(index.decode(flat[:, 0]).cpu().numpy())
                scores.append(score[:, 0].float().cpu().numpy())
            return np.concatenate(codes), np.concatenate(scores)
        finally:
            self.train(was_training)

    def tokenize_new_items(
        self, texts: Sequence[Mapping[str, str]], item_ids: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Give items their codes from their text and make them recommendable; ``(codes, item ids)``.

        ``item_ids``: dataset items without a code yet (cold start); ``None`` appends new items
        after the last id (``full_sort_predict`` grows by ``len(texts)`` columns).
        """
        codes, _ = self.generate_codes(texts, unique=True)
        return codes, self.add_items(codes, item_ids)

    def tokenize_item_file(self, item_file: str | Path, dataset: Any, out_path: str | Path) -> dict[str, Any]:
        """Tokenize the items of an atomic ``.item`` file and write every item's codes to ``out_path``.

        Items the dataset knows but that have no code yet are filled in; unknown items are
        appended; an item that already has codes is an error (codes never change).
        """
        field = dataset.iid_field
        tokens, fields = read_new_items(item_file, self._config, field)
        known = dataset.field2token_id[field]
        known_ids = [known.get(t) for t in tokens]
        coded = [t for t, i in zip(tokens, known_ids) if i is not None and self.id_table.assigned[i]]
        if coded:
            raise ValueError(
                f"new_items={item_file}: items {coded[:5]} are already in the dataset with codes, and codes never "
                "change; remove them from the file (list only new items)"
            )
        cold = [r for r, i in enumerate(known_ids) if i is not None]
        new = [r for r, i in enumerate(known_ids) if i is None]
        if cold:
            self.tokenize_new_items([fields[r] for r in cold], [known_ids[r] for r in cold])
        if new:
            self.tokenize_new_items([fields[r] for r in new])
            self.appended_tokens += [tokens[r] for r in new]
        all_tokens = dataset.id2token(field, np.arange(1, dataset.item_num)).tolist() + self.appended_tokens
        written = self.id_table.export_index_json([str(t) for t in all_tokens], out_path)
        LOGGER.info("STORE: %d cold + %d new items tokenized; codes of all items in %s", len(cold), len(new), written)
        return {"new_items_index": str(written), "cold_items": len(cold), "new_items": len(new)}

    @classmethod
    def check_run_inputs(cls, config: Any, dataset_items: set[str] | None) -> None:
        """Before any stage or training (``validate.validate_config``): ``--new_items`` must be a
        readable ``.item`` file of new items with text. ``dataset_items``: the ``.inter`` item
        tokens when they are exactly the dataset's (no filters) and every one of them will get a
        code from the tokenizer stage; listing one of them is then an error, as after training."""
        if not config["new_items"]:
            return
        tokens, _ = read_new_items(config["new_items"], config, config["ITEM_ID_FIELD"])
        if dataset_items is not None and config["semantic_id_table"] is None:
            taken = [t for t in tokens if t in dataset_items]
            if taken:
                raise ValueError(
                    f"new_items={config['new_items']}: items {taken[:5]} ({len(taken)} in all) are already in the "
                    f"dataset {config['dataset']} and have codes that never change; remove them from the file "
                    "(list only new items)"
                )

    def after_run(self, config: Any, dataset: Any) -> dict[str, Any] | None:
        """``--new_items=<.item file>``: after training, tokenize those items into the index JSON."""
        if not config["new_items"]:
            return None
        out = Path(config["checkpoint_dir"] or "saved") / f"{config['dataset']}.STORE.index.json"
        return self.tokenize_item_file(config["new_items"], dataset, out)

    # ----------------------------------------------------------------- token -> text
    @torch.no_grad()
    def generate_text(self, item_ids: Sequence[int], field: str = "title") -> list[str]:
        """token -> text: greedy text STORE writes for items given by their codes (``field``: title or
        description). Code tokens are suppressed: the answer is text. Every prompt of one template
        has the same length (all code tuples do), so batches need no padding."""
        template = next(
            (i for i, t in enumerate(self.templates.templates("index2item")) if t.response.strip() == "{" + field + "}"),
            None,
        )
        if template is None:
            raise ValueError(f"no index2item template answers with just {{{field}}}; add one to the templates file")
        codes = self.item_codes.strings
        prompts = [self.templates.fill("index2item", template, {"item": codes[int(i)], field: ""})[0] for i in item_ids]
        if any(not codes[int(i)] for i in item_ids):
            raise ValueError("token -> text needs items with codes; tokenize them first")
        code_tokens = list(range(self.token_offsets[0], self.token_offsets[0] + self.n_code_tokens))
        was_training = self.training
        self.eval()
        try:
            out: list[str] = []
            for start in range(0, len(prompts), self.decode_batch_size):
                batch = encode_prompts(self.tokenizer, prompts[start : start + self.decode_batch_size]).to(self.device)
                generated = self.llm.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    max_new_tokens=self.text_max_tokens, do_sample=False, num_beams=1,
                    suppress_tokens=code_tokens,  # a text answer never writes code tokens
                    pad_token_id=int(self.tokenizer.pad_token_id), eos_token_id=int(self.tokenizer.eos_token_id),
                )
                new_tokens = generated[:, batch.input_ids.shape[1] :]
                out += [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            return out
        finally:
            self.train(was_training)

    def __str__(self) -> str:
        return super().__str__().replace("LCRec(", "STORE(", 1) + f" task weights={self.task_weights}"
