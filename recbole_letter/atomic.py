"""Atomic file writes: a temp file in the target folder, renamed into place only on success.

Results tables, exported indices, plots and configs are what users keep; a crash or Ctrl-C in
the middle of a write must leave the previous file (or none), never a truncated one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
