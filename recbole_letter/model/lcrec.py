"""LC-Rec (Zheng et al., ICDE 2024): a causal LLM that writes items as semantic-ID tokens.

Every code of every level becomes a new token of the LLM's vocabulary; the LLM is fine-tuned
(LoRA by default) on instruction prompts of several tasks (:mod:`recbole_letter.llm.tasks`)
and recommends by generating the next item's code tokens after a ``seqrec`` prompt. With
LETTER's semantic IDs and ``tau < 1`` this is LETTER-LC-Rec (arXiv 2405.07314).

This file holds only what is LC-Rec's own: prompts, the LLM and its beam stepper. The ID table,
prefix tables, beam-size check, chunked full-sort decoding and teacher-forced ``predict`` are
the :class:`~recbole_letter.model.base.SemanticIDRecommender`'s.

Departures from the released code, on purpose:

* **Decoding** is the generic constrained beam search over the real items' prefix tables
  (LC-Rec constrains each position to *any* code of that level, so it can emit tuples that are
  no item and drops them afterwards; here an invalid ID is impossible), batched over users, with
  one prompt cache per user shared by its beams (:mod:`recbole_letter.generation.causal_lm_stepper`).
* **Embedding rows**: by default only the new code-token rows of the embedding / LM head train
  (``llm_train_embeddings: new_rows``); ``full`` trains them whole, as released.
* **Rows come from RecBole** (``seqrec`` = the train dataloader's rows, i.e. the histories
  SASRec sees); auxiliary-task samples ride along in each batch in proportion to their pool
  sizes, so one RecBole epoch passes once over every pool.
* **Checkpoints** hold only what trains (adapters + new rows; the whole LLM with
  ``finetune: full``); the frozen base is re-read from ``llm_path`` when the model is built.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_letter.data.item_text import item_file_for, read_item_table
from recbole_letter.generation.causal_lm_stepper import CausalLMBeamStepper
from recbole_letter.generation.losses import ranking_guided_loss
from recbole_letter.generation.trainer import GenerativeTrainer
from recbole_letter.llm.backbone import count_parameters, load_backbone
from recbole_letter.llm.batching import encode_prompts, encode_training, response_logits, text_response_ids
from recbole_letter.llm.finetuning import apply_finetuning, trained_state_keys
from recbole_letter.llm.prompts import TASKS, PromptTemplates
from recbole_letter.llm.tasks import (
    ItemCodes,
    ItemText,
    TaskSampler,
    TrainRows,
    item_text_from_table,
    load_user_preferences,
)
from recbole_letter.llm.vocabulary import add_code_tokens
from recbole_letter.model.base import SemanticIDRecommender

LOGGER = logging.getLogger("recbole_letter")


def _task_list(value: Any) -> list[str]:
    tasks = [t.strip().lower() for t in (value.split(",") if isinstance(value, str) else list(value)) if str(t).strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or "seqrec" not in tasks:
        raise ValueError(
            f"lcrec_tasks must be a comma list of {', '.join(TASKS)} that includes seqrec; got {value!r}"
        )
    return tasks


class LCRecTrainer(GenerativeTrainer):
    """Generative trainer that, with ``test_prompt_id: all``, tests once per seqrec template.

    The result holds the mean over templates under each metric's own name (so tables and model
    selection read it as usual) plus ``<metric>_min`` / ``<metric>_max``. Validation during
    training always uses one template (the first), to keep epochs affordable.
    """

    _validating = False

    def _valid_epoch(self, *args, **kwargs):
        self._validating = True
        try:
            return super()._valid_epoch(*args, **kwargs)
        finally:
            self._validating = False

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        ids = self.model.test_prompt_ids
        if self._validating or len(ids) == 1:
            self.model.eval_prompt_id = ids[0]
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        runs = []
        for n, prompt_id in enumerate(ids):
            self.model.eval_prompt_id = prompt_id
            runs.append(super().evaluate(eval_data, load_best_model and n == 0, model_file, show_progress))
        self.model.eval_prompt_id = ids[0]
        out: OrderedDict[str, float] = OrderedDict()
        for key in runs[0]:
            values = [float(r[key]) for r in runs]
            out[key] = round(float(np.mean(values)), 4)
        for key in runs[0]:
            values = [float(r[key]) for r in runs]
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
        LOGGER.info("LCRec: test results averaged over %d seqrec templates", len(ids))
        return out


class LCRec(SemanticIDRecommender):
    """Causal LLM + code tokens + LoRA + constrained beam search (see module docstring)."""

    trainer_class = LCRecTrainer
    default_config_names = ("LETTER", "LCRec")
    default_templates_file: Path | None = None  # None: recbole_letter/llm/templates.yaml

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.tau = float(self.require(config, "tau"))
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (1.0 = plain LC-Rec loss), got {self.tau}")
        self.tasks = self._training_tasks(config)
        self.max_history = int(self.require(config, "MAX_ITEM_LIST_LENGTH"))
        self.separator = str(self.require(config, "lcrec_history_separator"))
        self.templates = PromptTemplates.load(config["lcrec_templates_file"] or self.default_templates_file)
        self.test_prompt_ids = self._prompt_ids(self.require(config, "test_prompt_id"))
        self.eval_prompt_id = self.test_prompt_ids[0]
        seed = int(config["seed"] or 0)
        self._rng = np.random.default_rng(seed)

        backbone = load_backbone(
            str(self.require(config, "llm_path")),
            dtype=str(self.require(config, "llm_dtype")),
            seed=seed,
            tiny_config=config["llm_tiny_config"],
        )
        self.tokenizer = backbone.tokenizer
        self.backbone_name = backbone.name
        # Fingerprint of the frozen base (its first embedding rows): LoRA checkpoints carry only
        # adapters, so loading them onto another base must fail loudly, not silently mis-predict.
        rows = backbone.model.get_input_embeddings().weight.detach()[: min(1024, len(self.tokenizer))].double()
        self.register_buffer("backbone_signature", torch.stack([rows.sum(), rows.square().sum(), torch.tensor(float(rows.numel()), dtype=torch.float64)]))
        first = add_code_tokens(self.tokenizer, backbone.model, self.id_table.code_token_strings())
        self.place_code_tokens(first_token=first, pad_token=int(self.tokenizer.pad_token_id))
        self.finetune = str(self.require(config, "finetune")).lower()
        self.llm = apply_finetuning(
            backbone.model,
            self.finetune,
            range(first, first + self.n_code_tokens),
            lora_r=int(self.require(config, "lora_r")),
            lora_alpha=int(self.require(config, "lora_alpha")),
            lora_dropout=float(self.require(config, "lora_dropout")),
            target_modules=self._names(self.require(config, "lora_target_modules")),
            train_embeddings=str(self.require(config, "llm_train_embeddings")),
        )
        if bool(config["llm_gradient_checkpointing"]):
            self.llm.gradient_checkpointing_enable()
        total, trainable = count_parameters(self.llm)
        LOGGER.info(
            "LCRec backbone %s: %s parameters, %s trainable (finetune=%s)",
            self.backbone_name, f"{total:,}", f"{trainable:,}", self.finetune,
        )
        self.item_codes = ItemCodes(
            strings=self._code_strings(), token_ids=self.item_tokens.cpu().numpy(), eos_id=int(self.tokenizer.eos_token_id)
        )
        self.sampler = self._task_sampler(config, dataset, seed)
        n_rows = max(len(dataset.inter_feat), 1)
        self.aux_per_row = len(self.sampler) / n_rows
        if self.sampler.pools:
            LOGGER.info(
                "LCRec tasks: seqrec (%d train rows) + %s; %.2f auxiliary samples per seqrec row",
                n_rows, ", ".join(f"{t} ({len(p)})" for t, p in self.sampler.pools.items()), self.aux_per_row,
            )

    # ----------------------------------------------------------------- construction helpers
    def _training_tasks(self, config: Any) -> list[str]:
        """The prompt tasks trained on (template names); LC-Rec reads ``lcrec_tasks``."""
        return _task_list(self.require(config, "lcrec_tasks"))

    @staticmethod
    def _names(value: Any) -> list[str]:
        return [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]

    def _prompt_ids(self, value: Any) -> list[int]:
        n = len(self.templates.templates("seqrec"))
        if str(value).lower() == "all":
            return list(range(n))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise ValueError(f"test_prompt_id must be 'all' or an int in [0, {n}), got {value!r}")
        return [value]

    def _code_strings(self) -> np.ndarray:
        strings = np.array([""] * self.n_items, dtype=object)
        ids = np.flatnonzero(self.id_table.assigned)  # items without a code yet keep ""
        strings[ids] = ["".join(t) for t in self.id_table.item_token_strings(ids)]
        return strings

    def on_id_table_changed(self) -> None:
        """New items got codes (:meth:`add_items`): prompts must write them (the sampler shares this object)."""
        self.item_codes.strings = self._code_strings()
        self.item_codes.token_ids = self.item_tokens.cpu().numpy()

    def _task_sampler(self, config: Any, dataset: Any, seed: int) -> TaskSampler:
        feat = dataset.inter_feat
        rows = TrainRows(
            histories=feat[self.ITEM_SEQ].numpy(),
            lengths=feat[self.ITEM_SEQ_LEN].numpy(),
            targets=feat[self.ITEM_ID].numpy(),
            users=feat[self.USER_ID].numpy(),
        )
        wants_text = any(t in self.tasks for t in ("item2index", "index2item", "fusionseqrec"))
        item_text = self.item_text = None  # every item's text (self.item_text), also of items without codes
        item_file = item_file_for(config)
        if wants_text and item_file.is_file():
            table, _ = read_item_table(item_file, sep=config["field_separator"] or "\t")
            tokens = [str(t) for t in dataset.id2token(dataset.iid_field, np.arange(1, dataset.item_num)).tolist()]
            item_text = item_text_from_table(
                table, tokens, self._names(self.require(config, "lcrec_title_fields")),
                self._names(self.require(config, "lcrec_description_fields")),
                config["lcrec_text_max_chars"], id_field=dataset.iid_field,
            )
            self.item_text = item_text
            if item_text is not None:  # items without a code (cold start) cannot be item-task targets
                unassigned = np.flatnonzero(~self.id_table.assigned[: len(item_text.titles)])
                item_text = ItemText(list(item_text.titles), list(item_text.descriptions))
                for item in unassigned:
                    item_text.titles[item] = item_text.descriptions[item] = ""
        prefs = None
        user_file = Path(config["data_path"]) / f"{config['dataset']}.user.json"
        if any(t in self.tasks for t in ("itemsearch", "preferenceobtain")) and user_file.is_file():
            users = dataset.field2token_id[dataset.uid_field]
            items = dataset.field2token_id[dataset.iid_field]
            prefs = load_user_preferences(user_file, users.get, items.get)
        counts = config["lcrec_task_samples"] or {}
        if not isinstance(counts, dict):
            raise ValueError(f"lcrec_task_samples must be a mapping task -> count (0 = all), got {counts!r}")
        return TaskSampler(
            self.templates, self.item_codes, self.tasks, counts, rows, item_text, prefs,
            self.max_history, self.separator, seed,
        )

    # ----------------------------------------------------------------- prompts
    def seqrec_prompts(self, interaction: Any, prompt_id: int | None) -> list[str]:
        """One seqrec prompt per row; ``prompt_id=None`` draws a random template per row."""
        seq = interaction[self.ITEM_SEQ].cpu().numpy()
        lengths = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        n_templates = len(self.templates.templates("seqrec"))
        prompts = []
        for row, length in zip(seq, lengths):
            items = row[:length][-self.max_history :]
            pid = int(self._rng.integers(n_templates)) if prompt_id is None else prompt_id
            history = self.item_codes.history(items, self.separator)
            prompts.append(self.templates.fill("seqrec", pid, {"history": history, "item": ""})[0])
        return prompts

    # ----------------------------------------------------------------- RecBole API
    def training_samples(self, interaction: Any) -> tuple[list[str], list[list[int] | str]]:
        """Prompts and responses (code-token ids, or text) of one batch: its seqrec rows plus
        auxiliary-task samples in proportion to their pool sizes."""
        targets = interaction[self.POS_ITEM_ID].cpu().numpy()
        prompts = self.seqrec_prompts(interaction, prompt_id=None)
        responses: list[list[int] | str] = [self.item_codes.response(t) for t in targets]
        expected = len(targets) * self.aux_per_row
        n_aux = int(expected) + int(self._rng.random() < expected - int(expected))
        for sample in self.sampler.draw(n_aux) if n_aux else []:
            prompts.append(sample.prompt)
            responses.append(sample.response)
        return prompts, responses

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        """Ranking-guided loss over the response tokens of :meth:`training_samples`."""
        prompts, responses = self.training_samples(interaction)
        text_rows = [i for i, r in enumerate(responses) if isinstance(r, str)]
        if text_rows:
            for row, ids in zip(text_rows, text_response_ids(self.tokenizer, [responses[i] for i in text_rows])):
                responses[row] = ids
        batch = encode_training(self.tokenizer, prompts, responses).to(self.device)
        return ranking_guided_loss(response_logits(self.llm, batch), batch.labels, self.tau)

    def item_log_probs(self, interaction: Any, items: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probability ``[B]`` of each item's code tokens after its seqrec prompt."""
        prompts = self.seqrec_prompts(interaction, prompt_id=self.eval_prompt_id)
        codes = self.item_tokens[items].cpu().tolist()
        batch = encode_training(self.tokenizer, prompts, codes).to(self.device)
        log_probs = torch.log_softmax(response_logits(self.llm, batch).float(), dim=-1)
        return log_probs.gather(-1, batch.labels[..., None]).squeeze(-1).sum(-1)

    def make_stepper(self, interaction: Any, **options: Any) -> CausalLMBeamStepper:
        """Encode the users' seqrec prompts once; beams share each user's prompt cache."""
        prompts = self.seqrec_prompts(interaction, prompt_id=self.eval_prompt_id)
        return CausalLMBeamStepper(self.llm, encode_prompts(self.tokenizer, prompts).to(self.device))

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_keys(self) -> set[str]:
        """Persistent entries that train (LLM adapters / new rows / all with finetune: full) + our own buffers."""
        trained = {f"llm.{k}" for k in trained_state_keys(self.llm)}
        entries = super().state_dict(keep_vars=True)
        return {k for k in entries if k in trained or not k.startswith("llm.")}

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """Only what trains (+ the semantic-ID table): the frozen base comes from ``llm_path``."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + k for k in self._checkpoint_keys()}
        for key in [k for k in state if k.startswith(prefix) and k not in keep]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a checkpoint of :meth:`state_dict`; with ``strict``, every trained tensor must be in it."""
        saved = state_dict.get("backbone_signature")
        if self.finetune == "lora" and saved is not None and not torch.allclose(
            saved.cpu().double(), self.backbone_signature.cpu(), rtol=1e-6, atol=1e-8
        ):
            raise ValueError(
                f"LCRec checkpoint's adapters were trained on another base LLM than {self.backbone_name}; "
                "set llm_path (and llm_tiny_config) to the model it was trained with"
            )
        expected = self._checkpoint_keys()
        missing = sorted(expected - set(state_dict))
        if strict and missing:
            raise RuntimeError(
                f"LCRec checkpoint lacks {len(missing)} trained tensors (e.g. {missing[:3]}): it was saved "
                "with other finetune / llm_train_embeddings / lora_* settings; build the model with those"
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict and result.unexpected_keys:
            raise RuntimeError(
                f"LCRec checkpoint has tensors this model does not train: {result.unexpected_keys[:3]}; "
                "build the model with the settings it was trained with"
            )
        return result

    def __str__(self) -> str:
        total, trainable = count_parameters(self.llm)
        return (
            f"LCRec(backbone={self.backbone_name}, finetune={self.finetune}, levels={self.n_levels}, "
            f"code tokens={self.n_code_tokens}, tasks={','.join(self.tasks)}, beam={self.beam_size}, "
            f"tau={self.tau}, parameters={total:,}, trainable={trainable:,})"
        )
