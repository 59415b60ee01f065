"""RecBole ``Trainer`` with gradient accumulation and a warm-up learning-rate schedule.

Generative recommenders (TIGER, LC-Rec) are trained with large effective batches and a warm-up
+ decay schedule (TIGER: inverse square root; LETTER's released code: cosine), neither of which
RecBole's ``Trainer`` offers. Only ``_train_epoch`` is replaced; fitting, early stopping,
checkpointing and evaluation stay RecBole's.

Config keys (see ``properties/model/TIGER.yaml``): ``gradient_accumulation_steps``,
``lr_scheduler`` (``none`` | ``cosine`` | ``inverse_sqrt``), ``warmup_steps`` (counted in
optimizer updates, not batches).

Resuming (``trainer.resume_checkpoint(file)`` then ``fit``) continues exactly where the saved
run was: besides RecBole's model/optimizer state, each checkpoint holds the LR schedule, every
global random stream (dropout masks), the training loader's shuffling generator and the best
validation result, so a run killed after a checkpoint and resumed ends with the metrics of an
uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from recbole.trainer import Trainer
from torch.nn.utils.clip_grad import clip_grad_norm_
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from recbole_letter.config import require
from recbole_letter.seeding import capture_rng_state, restore_rng_state

SCHEDULERS = ("none", "cosine", "inverse_sqrt")


def lr_lambda(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer updates.

    All schedules warm up linearly over ``warmup_steps`` (as HF's ``get_*_schedule`` helpers do,
    so LETTER / LC-Rec settings transfer). Afterwards ``none`` stays at 1, ``cosine`` decays to 0
    at ``total_steps``, ``inverse_sqrt`` decays as ``sqrt(warmup_steps / step)`` (T5 / TIGER).
    """
    if kind not in SCHEDULERS:
        raise ValueError(f"lr_scheduler must be one of {SCHEDULERS}, got {kind!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind == "inverse_sqrt" and warmup_steps == 0:
        raise ValueError("lr_scheduler=inverse_sqrt needs warmup_steps > 0 (the decay is sqrt(warmup/step))")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if kind == "inverse_sqrt":
            return math.sqrt(warmup_steps / max(step, 1))
        return 1.0

    return factor


class GenerativeTrainer(Trainer):
    """RecBole ``Trainer`` + ``gradient_accumulation_steps`` + ``lr_scheduler`` / ``warmup_steps``."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        model_class = type(model)  # a missing key names the model's YAML that defines it
        accum = require(config, "gradient_accumulation_steps", model_class)
        self.accumulation_steps: int = int(accum)
        if self.accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accum}")
        self.scheduler_kind: str = str(require(config, "lr_scheduler", model_class)).lower()
        self.warmup_steps: int = int(require(config, "warmup_steps", model_class))
        lr_lambda(self.scheduler_kind, self.warmup_steps, 1)  # validate now, not after an epoch
        self.scheduler: LambdaLR | None = None
        cap = require(config, "train_batches_per_epoch", model_class, allow_none=True)
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ValueError(f"train_batches_per_epoch must be a positive integer or ~, got {cap!r}")
        # CPU budgets: a generative model on 2 cores cannot afford RecBole's one-row-per-prefix
        # epochs (ml-100k: 97k rows); a cap makes each "epoch" a random slice of the shuffled data.
        self.batches_per_epoch_cap: int | None = cap
        self._train_data: Any = None
        self._pending_scheduler_state: dict | None = None
        self._pending_loader_state: torch.Tensor | None = None
        self._last_valid_result: dict | None = None
        self._short_after_mask = self._masked_rows = 0  # per evaluate(): see _full_sort_batch_eval

    # ----------------------------------------------------------------- checkpoints / resume
    def extra_checkpoint_state(self) -> dict[str, Any]:
        """What RecBole's checkpoint lacks to continue a run bit-for-bit (added by the
        checkpoint writer in :mod:`recbole_letter.compat`)."""
        generator = getattr(self._train_data, "generator", None)
        return {
            "lr_scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng_state": capture_rng_state(),
            "train_loader_generator": None if generator is None else generator.get_state(),
            # RecBole saves when a validation improves, *before* it updates best_valid_result,
            # so the result being saved is the one just computed
            "best_valid_result": self._last_valid_result or self.best_valid_result,
        }

    def restore_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_checkpoint_state`; the schedule and the loader's generator are
        applied when ``fit`` creates / receives them."""
        self._pending_scheduler_state = checkpoint.get("lr_scheduler")
        self._pending_loader_state = checkpoint.get("train_loader_generator")
        if checkpoint.get("best_valid_result") is not None:
            self.best_valid_result = checkpoint["best_valid_result"]
        if checkpoint.get("rng_state") is not None:
            restore_rng_state(checkpoint["rng_state"])

    # ----------------------------------------------------------------- evaluation
    def _full_sort_batch_eval(self, batched_data):
        """RecBole's full-sort step, counting rows a history mask left with fewer than max(topk)
        ranked items: the mask (``eval_mask_history``) applies after the beam, so a user whose
        ``beam_size`` items are mostly history gets the rest of the top-K from ``-inf`` ties."""
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if batched_data[1] is not None:
            topk = self.config["topk"]
            max_k = max(topk) if isinstance(topk, (list, tuple)) else int(topk)
            self._short_after_mask += int((torch.isfinite(scores).sum(1) < max_k).sum())
            self._masked_rows += len(scores)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, *args, **kwargs):
        """RecBole's ``evaluate``; warns when the history mask left users short of max(topk) items."""
        self._short_after_mask = self._masked_rows = 0
        result = super().evaluate(eval_data, *args, **kwargs)
        if self._short_after_mask:
            self.logger.warning(
                "%d of %d users had fewer than max(topk) ranked items after the history mask (beam_size=%d): "
                "their last top-K slots were filled from -inf ties. Fix: raise beam_size (README: Protocol).",
                self._short_after_mask, self._masked_rows, getattr(self.model, "beam_size", -1),
            )
        return result

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._last_valid_result = valid_result
        return valid_score, valid_result

    def fit(self, train_data, *args, **kwargs):
        """RecBole's ``fit``; remembers the training loader (its shuffling state is checkpointed)."""
        self._train_data = train_data
        if self._pending_loader_state is not None and getattr(train_data, "generator", None) is not None:
            train_data.generator.set_state(self._pending_loader_state)
            self._pending_loader_state = None
        return super().fit(train_data, *args, **kwargs)

    def _make_scheduler(self, batches_per_epoch: int) -> LambdaLR | None:
        """Build the schedule once the number of optimizer updates per epoch is known."""
        if self.scheduler_kind == "none" and self.warmup_steps == 0:
            return None
        updates = math.ceil(batches_per_epoch / self.accumulation_steps) * self.epochs
        return LambdaLR(self.optimizer, lr_lambda(self.scheduler_kind, self.warmup_steps, updates))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """One epoch; gradients of ``gradient_accumulation_steps`` batches are summed per update.

        Each batch loss is divided by the number of batches in its accumulation group, so with
        equal batch sizes an update equals one step on the concatenated batch. The returned total
        is the sum of the *unscaled* batch losses, as in RecBole.
        """
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        n_batches = len(train_data)
        if self.batches_per_epoch_cap is not None:
            n_batches = min(n_batches, self.batches_per_epoch_cap)
        if self.scheduler is None:
            self.scheduler = self._make_scheduler(n_batches)
            if self.scheduler is not None and self._pending_scheduler_state is not None:
                self.scheduler.load_state_dict(self._pending_scheduler_state)
                # building a LambdaLR resets each group's lr to step 0's: put the resumed one back
                for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                    group["lr"] = lr
            self._pending_scheduler_state = None
        accum = self.accumulation_steps
        total_loss = None
        iter_data = (
            tqdm(train_data, total=n_batches, ncols=100, desc=f"Train {epoch_idx:>5}", disable=None)
            if show_progress
            else train_data
        )
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        scaler = torch.amp.GradScaler(enabled=self.enable_scaler)
        self.optimizer.zero_grad()
        for batch_idx, interaction in enumerate(iter_data):
            if batch_idx >= n_batches:
                break
            interaction = interaction.to(self.device)
            group_start = batch_idx - batch_idx % accum
            group_size = min(accum, n_batches - group_start)
            sync_loss = 0
            if not self.config["single_spec"]:
                self.set_reduce_hook()
                sync_loss = self.sync_grad_loss()
            with torch.autocast(device_type=self.device.type, enabled=self.enable_amp):
                losses = loss_func(interaction)
            if isinstance(losses, tuple):
                loss = sum(losses)
                loss_tuple = tuple(per_loss.item() for per_loss in losses)
                total_loss = (
                    loss_tuple if total_loss is None else tuple(map(sum, zip(total_loss, loss_tuple)))
                )
            else:
                loss = losses
                total_loss = losses.item() if total_loss is None else total_loss + losses.item()
            self._check_nan(loss)
            scaler.scale((loss + sync_loss) / group_size).backward()
            if batch_idx + 1 - group_start < group_size:
                continue
            if self.clip_grad_norm:
                scaler.unscale_(self.optimizer)
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
            self.optimizer.zero_grad()
            if self.scheduler is not None:
                self.scheduler.step()
        return total_loss
