"""LETTER and RQVAE as RecBole models: fitting one *is* training the item tokenizer.

A tokenizer does not score users, so its RecBole "evaluation" is the tokenizer quality report
(collisions, utilisation, entropy, Gini, CF-neighbour agreement and its lift over chance); that
way ``--model=RQVAE,LETTER`` puts both side by side in the usual results table. The "valid score"
(what ``--tune`` maximises) is the CF-agreement lift: raw agreement is maximised by collapsing
every item onto one code.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.trainer import AbstractTrainer
from recbole.utils import InputType, ModelType

from recbole_letter.stages.cf_embeddings import check_cf_config
from recbole_letter.stages.item_tokenizer import (
    ItemTokenizer,
    build_report,
    load_or_fit_tokenizer,
    publish,
    tokenizer_config_from,
    tokenizer_source,
)


class TokenizerFit(AbstractTrainer):
    """RecBole's ``trainer_class`` for a tokenizer: ``fit`` loads or fits it through the cached
    item-tokenizer stage (no batches, no epochs of a recommender), ``evaluate`` returns its report."""

    # Tokenizers are stored in the stage cache, not as RecBole .pth checkpoints.
    uses_recbole_checkpoints = False

    def __init__(self, config: Any, model: "LETTER") -> None:
        super().__init__(config, model)
        self.logger = logging.getLogger("recbole_letter")
        self.saved_model_file = None
        self.train_loss_dict: dict[int, float] = {}
        self.artefacts: dict[str, str] = {}

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        dataset = train_data._dataset
        source = tokenizer_source(self.config, self.model.method)  # a fit, or an index.json to report on
        tok = load_or_fit_tokenizer(self.config, dataset, source)
        report = dict(build_report(tok, self.config, dataset))
        fit_stats = json.loads((tok.entry / "fit.json").read_text(encoding="utf-8")) if tok.entry else {}
        report["fit_seconds"] = float(fit_stats.get("fit_seconds", float("nan")))
        # share of the text-embedding variance the decoded IDs reconstruct (n/a for an imported index)
        report["explained_variance"] = float(fit_stats.get("explained_variance", float("nan")))
        self.train_loss_dict = dict(enumerate(fit_stats.get("history", {}).get("total", [])))
        self.artefacts = publish(tok, self.config, self.model.method if source == self.model.method else "imported")
        if tok.entry is not None:
            self.artefacts["cache_entry"] = str(tok.entry)
        if verbose:
            self.logger.info("semantic IDs written to %s, code-usage plot %s", self.artefacts["index"], self.artefacts["plot"])
        self.model.tokenizer = tok
        self.model.report = report
        # the lift over chance, not the raw agreement, which a collapsed codebook maximises
        score = report["cf_agreement_lift"]
        if callback_fn is not None:
            callback_fn(0, score)
        return score, report

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.model.report is None:
            raise RuntimeError("the tokenizer has not been fitted yet: call fit() before evaluate()")
        return dict(self.model.report)


class LETTER(GeneralRecommender):
    """Learnable item tokenizer (RQ-VAE + CF contrastive + diversity regularisation)."""

    type = ModelType.GENERAL
    input_type = InputType.POINTWISE
    trainer_class = TokenizerFit
    method = "LETTER"

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        # Config errors surface here, before the text-embedding and CF stages spend minutes.
        tokenizer_config_from(config, self.method)
        check_cf_config(config)
        # RecBole expects parameters on a model; the tokenizer network lives in ``tokenizer``.
        self.placeholder = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.tokenizer: ItemTokenizer | None = None
        self.report: dict[str, float] | None = None

    def calculate_loss(self, interaction):
        raise NotImplementedError(f"{type(self).__name__} is fitted by TokenizerFit, not by batches")

    def predict(self, interaction):
        raise NotImplementedError(f"{type(self).__name__} is an item tokenizer; it does not score items")

    full_sort_predict = predict


class RQVAE(LETTER):
    """TIGER's original tokenizer: LETTER with the collaborative and diversity terms off."""

    method = "RQVAE"
    default_config_names = ("LETTER",)
