"""Safe file writes: a temp file in the target folder, renamed into place only on success.

Results tables, exported indices, plots, configs and converted datasets are what users keep; a
crash or Ctrl-C in the middle of a write must leave the previous file (or none), never a
truncated one. :func:`atomic_open` covers one file; :class:`StagedFiles` covers a set of files
that must appear together (a converted dataset's ``.inter``, ``.item`` and index) and builds on
the same temp-file rule. Directory-sized results (stage cache entries) use the stage cache's own
rename-a-folder scheme instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator


def temp_path_beside(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden temp name in ``path``'s folder (created if needed), so the final rename
    stays on one file system and is atomic. The name is unique per process and call; open it
    with mode ``"x"`` (not ``mkstemp``, which forces 0600) so the file gets the usual umask
    permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def remove_temp_files_of(pids: Iterable[int], folders: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Delete the ``*.tmp`` files that processes ``pids`` left under ``folders`` (recursively).

    A process killed mid-write (SIGKILL, out of memory) cannot remove its own temp file; every
    temp name here carries its writer's pid as a dot-separated part (:func:`temp_path_beside`,
    the trainer's checkpoint writes), so whoever saw the process die can remove exactly its files.
    """
    wanted = {str(pid) for pid in pids}
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in Path(folder).rglob("*.tmp"):
            if wanted & set(path.name.split(".")[:-1]):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _open_new(tmp: Path, mode: str, newline: str | None = None) -> IO[Any]:
    exclusive = mode.replace("w", "x")
    if "b" in mode:
        return open(tmp, exclusive)
    return open(tmp, exclusive, encoding="utf-8", newline=newline)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; it replaces ``path`` only if the block succeeds."""
    tmp = temp_path_beside(path)
    try:
        with _open_new(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(
    payload: Any, path: str | os.PathLike[str], default: Callable[[Any], Any] = str, trailing_newline: bool = False
) -> Path:
    """Write ``payload`` as indented JSON atomically (non-JSON values through ``default``)."""
    text = json.dumps(payload, indent=2, default=default)
    return write_text_atomic(path, text + "\n" if trailing_newline else text)


class StagedFiles:
    """Several outputs written as temp files beside their final paths, moved in only together.

    ``commit()`` renames them all after every write succeeded; ``discard()`` (on any error)
    removes the temp files and leaves earlier outputs untouched.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def _tmp_for(self, final: Path) -> Path:
        tmp = temp_path_beside(final)
        self._pending.append((tmp, Path(final)))
        return tmp

    def write(self, final: Path, writer: Callable[[IO[str]], None]) -> None:
        """Write text through ``writer(handle)`` (UTF-8, newlines as written)."""
        with _open_new(self._tmp_for(final), "w", newline="") as fh:
            writer(fh)

    def copy_bytes(self, src: Path, final: Path) -> None:
        with open(src, "rb") as fin, _open_new(self._tmp_for(final), "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)

    def commit(self) -> None:
        for tmp, final in self._pending:
            os.replace(tmp, final)
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
