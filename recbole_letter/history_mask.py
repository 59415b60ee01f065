"""``eval_mask_history``: one full-sort protocol for sequential and general models.

RecBole 1.2.1's full-sort evaluation leaves out of the ranking the items a user interacted with
in the earlier splits -- but only for *general* models (Pop, BPR...): its
``FullSortEvalDataLoader`` returns no history for sequential ones (SASRec, TIGER, LC-Rec, STORE),
whose Config is forced to ``repeatable: True``. A results table then compares a masked Pop
with unmasked sequential rows, and on a dataset without repeat interactions (ml-100k) every
history item a sequential model recommends is a certain miss.

With ``eval_mask_history: True`` the runner calls :func:`mask_history` on the validation and test
loaders of a sequential model. Their batches then carry the same history index RecBole builds
for general models -- the items of the training split at validation, of the training and
validation splits at test, minus the row's own target -- and RecBole's ``Trainer`` (hence every
trainer here, which all evaluate through ``Trainer._full_sort_batch_eval``) sets those scores to
``-inf`` before ranking. The hook lives on the loader, not in the models or trainers, so every
model and every path (training-time validation, test, data-parallel ranks, reloaded checkpoints)
gets it from one place. Ground layer: it needs only RecBole's data classes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

MASKED = "history masked"
UNMASKED = "history not masked"


def _is_full_sort(loader: Any) -> bool:
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    return isinstance(loader, FullSortEvalDataLoader)


def _user_items(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` of every interaction a sequential split holds: each row's target and
    its history list (a user's first item is never a target; it appears only in a list)."""
    data = dataset.inter_feat
    users = data[dataset.uid_field].numpy()
    targets = data[dataset.iid_field].numpy()
    lists = data[dataset.item_id_list_field].numpy()
    lengths = data[dataset.item_list_length_field].numpy()
    in_list = np.arange(lists.shape[1])[None, :] < lengths[:, None]
    list_users = np.broadcast_to(users[:, None], lists.shape)[in_list]
    return np.concatenate([users, list_users]), np.concatenate([targets, lists[in_list]])


def _seen_matrix(datasets: list[Any], n_users: int, n_items: int) -> Any:
    """Sparse boolean ``[users, items]``: what each user interacted with in ``datasets``."""
    import scipy.sparse as sp

    pairs = [_user_items(ds) for ds in datasets]
    users = np.concatenate([u for u, _ in pairs])
    items = np.concatenate([i for _, i in pairs])
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.int8), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    return matrix


class _CollateWithHistory:
    """Wraps a sequential full-sort loader's ``collate_fn``: RecBole's batch with the history index
    ``(rows, items)`` in the slot RecBole leaves ``None`` for sequential models. A module-level
    class, so the loader still pickles (RecBole's ``save_dataloaders``, worker processes)."""

    def __init__(self, collate: Any, seen: Any, uid_field: str) -> None:
        self.collate = collate
        self.seen = seen
        self.uid_field = uid_field

    def __call__(self, index: Any) -> tuple:
        interaction, history, positive_u, positive_i = self.collate(index)
        if history is not None:  # someone else already masks: leave it
            return interaction, history, positive_u, positive_i
        rows = self.seen[interaction[self.uid_field].numpy()].tocoo()
        # RecBole masks ``used - positive`` for general models: a repeat of the target stays rankable
        keep = rows.col != positive_i.numpy()[rows.row]
        history = (torch.from_numpy(rows.row[keep].astype(np.int64)), torch.from_numpy(rows.col[keep].astype(np.int64)))
        return interaction, history, positive_u, positive_i


def mask_history(config: Any, train_data: Any, valid_data: Any, test_data: Any) -> bool:
    """Apply ``config["eval_mask_history"]`` to a sequential model's full-sort loaders, in place.

    Returns whether any loader now masks (False when the option is off, for sampled evaluation,
    and for general models, which RecBole already masks: see :func:`history_protocol`). Calling it
    again is harmless.
    """
    if not config["eval_mask_history"]:
        return False
    train = train_data._dataset
    earlier = [train]
    masked = False
    for loader in (valid_data, test_data):
        if loader is None:
            continue
        if _is_full_sort(loader) and loader.is_sequential:
            if not isinstance(loader.collate_fn, _CollateWithHistory):
                seen = _seen_matrix(earlier, train.user_num, train.item_num)
                loader.collate_fn = _CollateWithHistory(loader.collate_fn, seen, train.uid_field)
            masked = True
        earlier = [*earlier, loader._dataset]  # test also leaves out the validation items
    return masked


def history_protocol(loader: Any) -> str | None:
    """How a full-sort loader treats the user's earlier items: :data:`MASKED` (RecBole's general
    models, or a sequential loader given :func:`mask_history`) or :data:`UNMASKED` (RecBole's
    sequential default). ``None`` for sampled evaluation, where neither applies."""
    if loader is None or not _is_full_sort(loader):
        return None
    if not loader.is_sequential or isinstance(loader.collate_fn, _CollateWithHistory):
        return MASKED
    return UNMASKED
