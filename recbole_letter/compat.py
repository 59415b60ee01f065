"""The one place that adapts RecBole 1.2.1 (and the Ray it pins) to today's numpy/scipy/torch.

RecBole 1.2.1 was released against numpy 1.x, scipy < 1.13 and torch < 2.6. Each shim below
names what upstream breaks, is applied idempotently by :func:`apply` (run on ``import
recbole_letter`` and, through :func:`ray_worker_setup`, inside every Ray worker), and has a test in
``tests/test_compat.py`` that fails without it (the checkpoint adaptation — trusted loading and
``recbole.quick_start.load_data_and_model`` for our models — in ``tests/test_recommend.py``).

Breakages avoided by *version pins* instead of code live in ``pyproject.toml`` (``pandas<3``:
RecBole's ``token_seq`` loading; ``setuptools<81``: ``pkg_resources`` for ray 2.6.3/hyperopt).
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_APPLIED = False

# numpy 2 removed these aliases. RecBole's Config touches np.float_/np.complex_/np.unicode_ in
# every ``Config(...)`` (its yaml/eval type handling) and ray 2.6.3's tune import touches np.bool8.
_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
    # The builtin-named aliases RecBole's ``Config.compatibility_settings`` sets (same targets):
    # its metrics use them (``NDCG.metric_info`` calls ``np.zeros_like(..., dtype=np.float)``), so
    # evaluating a checkpoint loaded without constructing a Config -- ``load_data_and_model``
    # unpickles it -- fails with "numpy has no attribute 'float'" unless they exist up front.
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}


def _restore_numpy_aliases() -> None:
    """Re-add removed numpy aliases, only where absent (never shadow a real attribute)."""
    for old, new in _NUMPY_ALIASES.items():
        if old not in np.__dict__:
            setattr(np, old, getattr(np, new))


def _restore_dok_update() -> None:
    """scipy >= 1.13 dropped ``dok_matrix._update``.

    RecBole's graph models (LightGCN, NGCF, GCMC, SpectralCF, NCL, KGIN, MCCLK) build their
    normalised adjacency with ``A._update(dict)``; without it graph construction raises
    AttributeError. The old method was a bulk ``dict.update`` of ``{(row, col): value}``; the
    modern dok_matrix keeps its entries in ``_dict``, and element assignment is the supported way
    to update it, so we route through ``_dict`` when present (fast) and fall back to item setting.
    """
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return

    def _update(self: Any, data: dict) -> None:
        store = getattr(self, "_dict", None)
        if isinstance(store, dict):
            store.update(data)
        else:  # pragma: no cover - other scipy layouts
            for key, value in data.items():
                self[key] = value

    sp.dok_matrix._update = _update


def apply() -> None:
    """Apply every runtime shim once per process. Safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _restore_numpy_aliases()
    _restore_dok_update()
    _patch_recbole_quick_start()
    _patch_after_import("recbole.config.configurator", _install_any_backend_init)
    _patch_after_import("recbole.trainer.trainer", _install_cpu_ddp)
    for name in _ENSURE_DIR_USERS:
        _patch_after_import(name, _install_race_free_ensure_dir)
    _APPLIED = True


def ray_worker_setup() -> None:
    """``worker_process_setup_hook`` for Ray: workers are fresh interpreters and need the shims too."""
    apply()


# ----------------------------------------------------------------------------- checkpoints
# torch >= 2.6 defaults to ``torch.load(weights_only=True)``. RecBole checkpoints pickle the Config
# (and ours the semantic-ID table inside it), so RecBole's ``evaluate(load_best_model=True)``,
# ``resume_checkpoint`` and ``load_data_and_model`` raise UnpicklingError. Full unpickling can run
# any code the file names, so it is done only for files this package wrote (they carry
# CHECKPOINT_MARKER, read below without unpickling anything) or when the user opts in.

CHECKPOINT_MARKER = "recbole_letter_checkpoint"
CHECKPOINT_FORMAT = 1
TRUST_ENV_VAR = "RECBOLE_LETTER_TRUST_CHECKPOINTS"


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint without our marker, loaded without the user opting in."""


class CheckpointMismatchError(ValueError):
    """A checkpoint used with another dataset (or another version of its files)."""


class _Inert:
    """Stands in for every class or function a pickle names while we only peek at it.

    Peeking must not run code from the file, so nothing is imported or called: objects become
    empty ``_Inert`` instances and only plain containers and strings keep their values.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _PeekUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        return _Inert

    def persistent_load(self, pid: Any) -> None:  # tensor storages live outside data.pkl
        return None


def read_checkpoint_marker(path: str | Path) -> dict | None:
    """The marker dict of a torch checkpoint, or None; reads the pickle without executing it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist. Fix: pass the .pth file a training run saved.")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        return None
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            return None
        with archive.open(pickles[0]) as stream:
            try:
                top = _PeekUnpickler(stream).load()
            except Exception:  # not a pickle we understand: treated as unmarked
                return None
    marker = top.get(CHECKPOINT_MARKER) if isinstance(top, dict) else None
    return marker if isinstance(marker, dict) else None


def _trust_opt_in() -> bool:
    return os.environ.get(TRUST_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}


def load_trusted_checkpoint(path: str | Path, map_location: Any = "cpu", trust: bool | None = None) -> dict:
    """``torch.load`` a RecBole checkpoint with full unpickling, if this package wrote it.

    A file without our marker is refused unless ``trust`` is true or the environment sets
    ``RECBOLE_LETTER_TRUST_CHECKPOINTS=1``. The marker says who wrote the file; it is not a
    signature, so only load checkpoints from places you trust.
    """
    marker = read_checkpoint_marker(path)
    if marker is None and not (trust or _trust_opt_in()):
        raise UntrustedCheckpointError(
            f"{path} was not written by recbole_letter (no '{CHECKPOINT_MARKER}' entry). Loading it unpickles "
            f"arbitrary Python objects, which can run code. Fix: if you trust the file (e.g. you trained it "
            f"with RecBole yourself), set {TRUST_ENV_VAR}=1 (or pass --trust_checkpoint to "
            f"recbole_letter.recommend)."
        )
    if marker is not None and int(marker.get("format", 0)) > CHECKPOINT_FORMAT:
        raise UntrustedCheckpointError(
            f"{path} uses checkpoint format {marker.get('format')}; this recbole_letter reads up to "
            f"{CHECKPOINT_FORMAT}. Fix: upgrade recbole_letter."
        )
    import torch

    return torch.load(str(path), map_location=map_location, weights_only=False)


def dataset_identity(dataset: Any) -> dict:
    """What ties a checkpoint to its data: the dataset name and the token of every internal id.

    Model rows are indexed by RecBole's internal ids, which depend on the files' contents; two
    datasets with the same name but other files would silently map rows to other items.
    """
    identity: dict[str, Any] = {"dataset": str(dataset.dataset_name)}
    for kind, field in (("user", dataset.uid_field), ("item", dataset.iid_field)):
        if field is not None and field in dataset.field2id_token:
            identity[f"{kind}_tokens"] = [str(t) for t in dataset.field2id_token[field]]
    return identity


def check_same_dataset(marker: dict | None, dataset: Any, path: str | Path) -> None:
    """Fail clearly when a checkpoint meets other data than it was trained on."""
    expected = (marker or {}).get("data")
    if not expected:
        return  # an opted-in foreign checkpoint: nothing recorded to compare with
    actual = dataset_identity(dataset)
    if expected["dataset"] != actual["dataset"]:
        raise CheckpointMismatchError(
            f"{path} was trained on dataset '{expected['dataset']}', not '{actual['dataset']}'. "
            f"Fix: use it with '{expected['dataset']}' (its data_path), or train a model on '{actual['dataset']}'."
        )
    for kind in ("item", "user"):
        want, got = expected.get(f"{kind}_tokens"), actual.get(f"{kind}_tokens")
        if want is None or want == got:
            continue
        got = got or []
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        shown = f"internal id {first}: {want[first] if first < len(want) else '<none>'!r} in the checkpoint, " \
            f"{got[first] if first < len(got) else '<none>'!r} now"
        raise CheckpointMismatchError(
            f"{path} was trained on other '{actual['dataset']}' files: its {kind} ids differ "
            f"({len(want) - 1} {kind}s in the checkpoint, {len(got) - 1} in {dataset.config['data_path']}; "
            f"first difference at {shown}). Its rows would score other {kind}s. "
            f"Fix: point data_path at the files it was trained on."
        )


def checkpoint_marker(data: dict | None) -> dict:
    """The entry our trainers add to every checkpoint they save."""
    return {"format": CHECKPOINT_FORMAT, "writer": "recbole_letter", "data": data}


def claim_checkpoint_file(path: str | os.PathLike) -> str:
    """Create ``path`` empty and exclusively, or the first free ``<stem>-<n><suffix>`` next to it.

    RecBole names a run's checkpoint ``<model>-<local time to the second>.pth``, so two runs of
    one model started in the same second in one ``checkpoint_dir`` (``benchmarks/quality.py
    --jobs``, parallel tuning trials, two shells) got the same file, and each tested whichever
    weights were written last: measured in the ml-100k converged comparison, where the tau 0.7
    row was tested on the tau 1.0 row's checkpoint. ``O_EXCL`` makes the claim atomic across
    processes; the caller then writes its checkpoint over the empty file it owns.
    """
    path = Path(path)
    candidate, n = path, 0
    while True:
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
            continue
        if candidate != path:
            logging.getLogger("recbole_letter").warning(
                "checkpoint %s already exists (another run of the same model started in the same second); "
                "this run saves to %s", path, candidate,
            )
        return str(candidate)


@functools.lru_cache(maxsize=None)
def trusted_checkpoint_trainer(base: type) -> type:
    """Subclass a RecBole Trainer class so its checkpoints carry our marker and reload on torch >= 2.6.

    ``fit`` records the training data's identity, ``_save_checkpoint`` (when the base uses
    RecBole's) writes it with the marker, and the two methods that call ``torch.load`` load
    trusted files and check the data. The rest (early stopping, evaluation, logging) is RecBole's.
    Cached so each base gets one subclass.
    """
    from recbole.trainer import Trainer

    saves_like_recbole = getattr(base, "_save_checkpoint", None) is Trainer._save_checkpoint

    class _TrustedCheckpointTrainer(base):  # type: ignore[misc, valid-type]
        _checkpoint_data: dict | None = None
        # Set once this trainer owns ``saved_model_file`` (claimed at its first save, or resumed from).
        _owns_checkpoint_file: bool = False

        def fit(self, train_data, *args, **kwargs):  # noqa: D401 - RecBole signature
            self._checkpoint_data = dataset_identity(train_data._dataset)
            return super().fit(train_data, *args, **kwargs)

        if saves_like_recbole:

            def _save_checkpoint(self, epoch, verbose=True, **kwargs):
                import torch
                from recbole.utils import set_color

                if not self.config["single_spec"] and self.config["local_rank"] != 0:
                    return
                saved_model_file = kwargs.pop("saved_model_file", None)
                claimed_now = False
                if saved_model_file is None:
                    if not self._owns_checkpoint_file:  # first save: never overwrite another run's file
                        self.saved_model_file = claim_checkpoint_file(self.saved_model_file)
                        self._owns_checkpoint_file = claimed_now = True
                    saved_model_file = self.saved_model_file
                state = {
                    "config": self.config,
                    "epoch": epoch,
                    "cur_step": self.cur_step,
                    "best_valid_score": self.best_valid_score,
                    "state_dict": self.model.state_dict(),
                    "other_parameter": self.model.other_parameter(),
                    "optimizer": self.optimizer.state_dict(),
                    CHECKPOINT_MARKER: checkpoint_marker(self._checkpoint_data),
                }
                extra = getattr(self, "extra_checkpoint_state", None)
                if extra is not None:  # e.g. the generative trainer's LR schedule and RNG state
                    state.update(extra())
                # Temp file + rename: a Ctrl-C, crash or rank killed mid-save leaves the previous
                # checkpoint, never half a file (and no temp file).
                tmp = f"{saved_model_file}.{os.getpid()}.tmp"
                try:
                    torch.save(state, tmp, pickle_protocol=4)
                    os.replace(tmp, saved_model_file)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    if claimed_now:  # nothing was saved: give back the empty file we claimed
                        Path(saved_model_file).unlink(missing_ok=True)
                        self._owns_checkpoint_file = False
                    raise
                if verbose:
                    self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

        def resume_checkpoint(self, resume_file):  # noqa: D401 - RecBole signature
            checkpoint = load_trusted_checkpoint(resume_file, self.device)
            self.saved_model_file = str(resume_file)
            self._owns_checkpoint_file = True  # continuing that run: keep writing its file
            self.start_epoch = checkpoint["epoch"] + 1
            self.cur_step = checkpoint["cur_step"]
            self.best_valid_score = checkpoint["best_valid_score"]
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            restore = getattr(self, "restore_extra_checkpoint_state", None)
            if restore is not None:
                restore(checkpoint)
            self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            if eval_data and load_best_model:
                checkpoint_file = model_file or self.saved_model_file
                if not self.config["single_spec"]:
                    # Only rank 0 saved, under its own time-stamped name: wait for it and use its path.
                    checkpoint_file = rank_zero_value(checkpoint_file)
                checkpoint = load_trusted_checkpoint(checkpoint_file, self.device)
                check_same_dataset(checkpoint.get(CHECKPOINT_MARKER), eval_data._dataset, checkpoint_file)
                self.model.load_state_dict(checkpoint["state_dict"])
                self.model.load_other_parameter(checkpoint.get("other_parameter"))
                self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
            return super().evaluate(
                eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
            )

    _TrustedCheckpointTrainer.__name__ = base.__name__
    _TrustedCheckpointTrainer.__qualname__ = base.__qualname__
    _TrustedCheckpointTrainer.__doc__ = base.__doc__
    return _TrustedCheckpointTrainer


def _check_data_folder(config: Any, model_file: str | Path) -> None:
    """RecBole would try to *download* a dataset whose folder is missing: fail clearly instead."""
    folder = Path(str(config["data_path"]))
    name = config["dataset"]
    if not folder.is_dir() or not any(folder.glob(f"{name}*.inter")):
        raise FileNotFoundError(
            f"{model_file} reads dataset '{name}' from {folder}, which has no {name}.inter. Fix: restore "
            f"the files there, or give their folder: load_data_and_model(..., data_path=<folder with "
            f"{name}.inter>) / recbole_letter.recommend --data_path=<folder containing '{name}/'>."
        )


def _use_available_device(config: Any) -> None:
    """A checkpoint trained on a GPU still loads on a machine without one (on the CPU)."""
    import torch

    device = torch.device(config["device"] or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
        config["use_gpu"] = False


def load_data_and_model(
    model_file: str | Path,
    *,
    data_path: str | Path | None = None,
    trust: bool | None = None,
    log: bool = True,
) -> tuple:
    """RecBole's ``load_data_and_model``, working for every model this package trains.

    Installed in place of RecBole's (see :func:`_patch_recbole_quick_start`). Differences, each a
    fix: the checkpoint loads on torch >= 2.6 when this package wrote it (or ``trust``); the model
    class is the one recorded in the checkpoint's Config (RecBole looks the *name* up in
    ``recbole.model`` and, not finding ours, falls through to models needing lightgbm); the data
    folder recorded at training time is checked to exist (RecBole would try a download) and the
    rebuilt dataset must have the ids the model was trained on. ``data_path`` points at the dataset
    folder when the files moved; ``log=False`` skips RecBole's ``./log`` file and config dump.
    Returns RecBole's tuple: ``config, model, dataset, train_data, valid_data, test_data``.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_logger, init_seed

    checkpoint = load_trusted_checkpoint(model_file, map_location="cpu", trust=trust)
    config = checkpoint["config"]
    if data_path is not None:
        set_data_path(config, data_path)
    _check_data_folder(config, model_file)
    _use_available_device(config)
    init_seed(config["seed"], config["reproducibility"])
    if log:
        init_logger(config)
        logging.getLogger().info(config)

    dataset = create_dataset(config)
    check_same_dataset(checkpoint.get(CHECKPOINT_MARKER), dataset, model_file)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    from recbole_letter.history_mask import mask_history

    mask_history(config, train_data, valid_data, test_data)  # evaluate under the protocol it was trained with

    init_seed(config["seed"], config["reproducibility"])
    model_class = getattr(config, "model_class", None)
    if not isinstance(model_class, type):
        model_class = get_model(config["model"])
    model = model_class(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``fullname`` is first imported.

    ``recbole.quick_start`` imports Ray (seconds), so ``import recbole_letter`` must not import it
    just to patch it; this finder patches it whenever the user (or RecBole) imports it.
    """

    def __init__(self, fullname: str, patch: Any) -> None:
        self.fullname = fullname
        self.patch = patch

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.fullname:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def _install_load_data_and_model(module: Any) -> None:
    module.load_data_and_model = load_data_and_model
    package = sys.modules.get("recbole.quick_start")
    if package is not None and hasattr(package, "load_data_and_model"):
        package.load_data_and_model = load_data_and_model


def _patch_recbole_quick_start() -> None:
    """``recbole.quick_start.load_data_and_model`` -> :func:`load_data_and_model`, now or on import."""
    name = "recbole.quick_start.quick_start"
    if name in sys.modules:
        _install_load_data_and_model(sys.modules[name])
    elif not any(isinstance(f, _PatchAfterImport) and f.fullname == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport(name, _install_load_data_and_model))


# ----------------------------------------------------------------------------- torch.distributed
# RecBole 1.2.1's Config starts multi-process training with init_process_group(backend="nccl") and
# a CUDA device per rank, and its Trainer wraps the model in DistributedDataParallel(device_ids=
# [local_rank]); neither works without GPUs. The replacement below keeps RecBole's keys and
# semantics (nproc, world_size, ip, port, offset; rank = local_rank + offset; tcp://ip:port) and
# changes only what the hardware dictates: NCCL with one GPU per rank, gloo on CPU. Under torchrun
# (RANK/WORLD_SIZE/MASTER_ADDR in the environment) the rendezvous is env://.


# Re-exported: these lived here before the process-group helpers moved to recbole_letter.distributed.
from recbole_letter.distributed import distributed_backend, launched_by_torchrun  # noqa: E402


def _init_device_any_backend(self: Any) -> None:
    """``Config._init_device`` that runs multi-process training on CPUs as well as GPUs."""
    cfg = self.final_config_dict
    if "local_rank" not in cfg:
        return _ORIGINAL_INIT_DEVICE(self)  # single process: RecBole's code unchanged
    import torch
    import torch.distributed as dist

    gpu = cfg["gpu_id"]
    gpu_id = ",".join(map(str, gpu)) if isinstance(gpu, tuple) else str(gpu)
    cfg["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    use_cuda = bool(gpu_id) and torch.cuda.is_available()
    local_rank, nproc = int(cfg["local_rank"]), int(cfg.get("nproc") or 1)
    if use_cuda and len(gpu_id.split(",")) < nproc:
        raise ValueError(
            f"nproc={nproc} GPU processes need as many GPUs, but gpu_id={gpu_id!r} lists "
            f"{len(gpu_id.split(','))}. Fix: --gpu_id=0,1,... with nproc entries, or lower nproc."
        )
    if not dist.is_initialized():
        from recbole_letter import distributed

        distributed.init_process_group(
            distributed_backend(use_cuda),
            rank=local_rank + int(cfg.get("offset") or 0),
            world_size=int(cfg["world_size"]),
            ip=cfg["ip"],
            port=cfg["port"],
            hosted_store=bool(cfg.get("ddp_hosted_store")),
            timeout=distributed.as_timeout(cfg.get("ddp_timeout")),
        )
    cfg["world_size"] = dist.get_world_size()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        cfg["device"] = torch.device("cuda", local_rank)
    else:
        cfg["device"] = torch.device("cpu")
    cfg["single_spec"] = False
    if local_rank != 0:  # as RecBole: only one process per node logs and shows progress
        cfg["state"] = "error"
        cfg["show_progress"] = False
        cfg["verbose"] = False


_ORIGINAL_INIT_DEVICE: Any = None


def _install_any_backend_init(module: Any) -> None:
    global _ORIGINAL_INIT_DEVICE
    if module.Config._init_device is _init_device_any_backend:
        return
    _ORIGINAL_INIT_DEVICE = module.Config._init_device
    module.Config._init_device = _init_device_any_backend


def _ddp_any_device(module: Any, device_ids: Any = None, **kwargs: Any) -> Any:
    """DistributedDataParallel that omits ``device_ids`` for CPU modules (torch rejects them there)."""
    from torch.nn.parallel import DistributedDataParallel

    if next(module.parameters()).device.type == "cpu":
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def _ensure_dir_race_free(dir_path: str) -> None:
    """RecBole's ``ensure_dir`` checks then creates: two ranks creating ``saved/`` at once crash."""
    os.makedirs(dir_path, exist_ok=True)


# Every RecBole module that binds ``ensure_dir`` by name (the trainer is patched with its DDP fix).
# ``init_logger`` creates ``./log`` with it on every rank, so two ranks starting together could die
# with FileExistsError (seen in CI: test_cli_two_ranks_run_tiger_end_to_end).
_ENSURE_DIR_USERS = ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.data.utils")


def _install_race_free_ensure_dir(module: Any) -> None:
    module.ensure_dir = _ensure_dir_race_free


def _install_cpu_ddp(module: Any) -> None:
    module.DistributedDataParallel = _ddp_any_device
    module.ensure_dir = _ensure_dir_race_free


def rank_zero_value(value: Any) -> Any:
    """Rank 0's ``value`` on every rank, after all ranks reached this point (a barrier)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _patch_after_import(name: str, patch: Any) -> None:
    """Run ``patch(module)`` now if ``name`` is imported, else right after its first import."""
    if name in sys.modules:
        patch(sys.modules[name])
    elif not any(isinstance(f, _PatchAfterImport) and f.fullname == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport(name, patch))


def set_data_path(config: Any, dataset_dir: str | Path) -> None:
    """Point a built Config at the dataset folder we resolved.

    RecBole's Config forces ``data_path`` to its bundled copy whenever the dataset is named
    ``ml-100k``, ignoring the user's ``data_path``; our resolver decides (user data wins), and
    this writes the decision back after Config has run.
    """
    config["data_path"] = str(dataset_dir)


apply()
