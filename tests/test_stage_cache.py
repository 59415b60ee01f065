"""Stage cache: keys, hits/misses, invalidation, atomicity and concurrent writers."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from recbole_letter.stages.stage_cache import (
    MANIFEST_NAME,
    StageCache,
    cache_root_for,
    directory_fingerprint,
    file_digest,
    stage_key,
)


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    f = tmp_path / "data.item"
    f.write_text("item_id:token\ttitle:token_seq\n1\tA\n2\tB\n", encoding="utf-8")
    return f


def _write_payload(value: str):
    def compute(out: Path) -> None:
        (out / "payload.txt").write_text(value, encoding="utf-8")

    return compute


def test_miss_then_hit_and_manifest(tmp_path: Path, inputs: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = stage_key("demo", [inputs], {"dim": 8, "fields": ["title"]})
    assert cache.get("demo", key) is None

    calls: list[Path] = []

    def compute(out: Path) -> None:
        calls.append(out)
        (out / "payload.txt").write_text("x", encoding="utf-8")

    entry = cache.get_or_compute("demo", key, compute)
    assert (entry / "payload.txt").read_text() == "x"
    assert cache.get("demo", key) == entry
    assert cache.get_or_compute("demo", key, compute) == entry
    assert len(calls) == 1 and calls[0] != entry  # written elsewhere, then renamed into place

    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    assert manifest["key"] == key.digest and manifest["stage"] == "demo"
    assert manifest["params"] == {"dim": 8, "fields": ["title"]}
    assert manifest["files"][0]["path"] == str(inputs)
    assert len(manifest["files"][0]["sha256"]) == 64
    assert manifest["created"] and manifest["package_version"]
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []


def test_key_is_stable_and_sensitive(tmp_path: Path, inputs: Path) -> None:
    a = stage_key("demo", [inputs], {"b": 1, "a": [1, 2], "p": Path("/x")})
    b = stage_key("demo", [inputs], {"p": "/x", "a": [1, 2], "b": 1})
    assert a.digest == b.digest
    assert stage_key("demo", [inputs], {"b": 2, "a": [1, 2], "p": "/x"}).digest != a.digest
    assert stage_key("other", [inputs], {"b": 1, "a": [1, 2], "p": "/x"}).digest != a.digest
    moved = tmp_path / "moved.item"
    moved.write_bytes(inputs.read_bytes())
    assert stage_key("demo", [moved], {"b": 1, "a": [1, 2], "p": "/x"}).digest == a.digest  # content, not path
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        stage_key("demo", [inputs], {"obj": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stage_key("demo", [tmp_path / "nope"], {})


def test_invalidation_on_param_and_content_change(tmp_path: Path, inputs: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    k1 = stage_key("demo", [inputs], {"dim": 8})
    cache.get_or_compute("demo", k1, _write_payload("v1"))

    k2 = stage_key("demo", [inputs], {"dim": 16})
    assert cache.get("demo", k2) is None

    # Same size and same mtime, different bytes: a size+mtime key would wrongly hit.
    st = inputs.stat()
    inputs.write_text(inputs.read_text().replace("A", "C"), encoding="utf-8")
    os.utime(inputs, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inputs.stat().st_size == st.st_size
    k3 = stage_key("demo", [inputs], {"dim": 8})
    assert k3.digest != k1.digest
    assert cache.get("demo", k3) is None
    entry = cache.get_or_compute("demo", k3, _write_payload("v3"))
    assert (entry / "payload.txt").read_text() == "v3"
    assert (cache.get("demo", k1) / "payload.txt").read_text() == "v1"  # old entry untouched


def test_exception_leaves_nothing(tmp_path: Path, inputs: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = stage_key("demo", [inputs], {})

    def boom(out: Path) -> None:
        (out / "half.npy").write_bytes(b"partial")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache.get_or_compute("demo", key, boom)
    assert cache.get("demo", key) is None
    leftovers = [p.name for p in (tmp_path / "stages" / "demo").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []

    with pytest.raises(KeyboardInterrupt):
        with cache.writing("demo", key) as tmp:
            (tmp / "x").write_text("y")
            raise KeyboardInterrupt
    assert cache.get("demo", key) is None

    with cache.writing("demo", key, extra={"note": "ok"}) as tmp:
        (tmp / "x").write_text("y")
    assert cache.manifest("demo", key)["extra"] == {"note": "ok"}


def test_incomplete_and_stale_entries_are_ignored(tmp_path: Path, inputs: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = stage_key("demo", [inputs], {})
    entry = cache.entry_dir("demo", key)
    entry.mkdir(parents=True)
    (entry / "payload.txt").write_text("half")  # no manifest: a hand-made / interrupted dir
    stale = entry.parent / f".tmp-{entry.name}-dead"
    stale.mkdir()
    assert cache.get("demo", key) is None
    got = cache.get_or_compute("demo", key, _write_payload("full"))
    assert (got / "payload.txt").read_text() == "full"
    assert not stale.exists()

    with pytest.raises(ValueError, match="made for stage"):
        cache.get("other", key)
    with pytest.raises(ValueError, match="not a sha256"):
        cache.get("demo", "../../etc")
    assert cache.get("demo", key.digest) == got  # plain string keys work too


def test_cache_root_and_fingerprint(tmp_path: Path) -> None:
    assert cache_root_for({"checkpoint_dir": str(tmp_path)}) == tmp_path / "stages"
    assert cache_root_for({}) == Path("saved") / "stages"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 4096)
    fp = directory_fingerprint(model)
    assert directory_fingerprint(model, full_hash_limit=1024) != fp  # sampled vs full hash mode
    (model / "weights.bin").write_bytes(b"\1" + b"\0" * 4095)
    assert directory_fingerprint(model) != fp


def _concurrent_worker(root: str, item: str, idx: int, barrier, calls_file: str, out_file: str) -> None:
    cache = StageCache(root)
    key = stage_key("demo", [item], {"k": 1})

    def compute(out: Path) -> None:
        with open(calls_file, "a", encoding="utf-8") as fh:
            fh.write(f"{idx}\n")
        time.sleep(1.0)  # long enough that the other process is surely waiting on the lock
        (out / "payload.txt").write_text("computed-once", encoding="utf-8")

    barrier.wait()
    entry = cache.get_or_compute("demo", key, compute)
    Path(out_file).write_text(f"{entry}\n{(entry / 'payload.txt').read_text()}", encoding="utf-8")


def test_two_processes_compute_once(tmp_path: Path, inputs: Path) -> None:
    ctx = mp.get_context("fork")  # the child only does file I/O; fork avoids re-importing test modules
    barrier = ctx.Barrier(2)
    calls = tmp_path / "calls.txt"
    procs = [
        ctx.Process(
            target=_concurrent_worker,
            args=(str(tmp_path / "stages"), str(inputs), i, barrier, str(calls), str(tmp_path / f"out{i}.txt")),
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(calls.read_text().split()) == 1
    results = [(tmp_path / f"out{i}.txt").read_text().split("\n") for i in range(2)]
    assert results[0] == results[1]
    assert results[0][1] == "computed-once"
    assert (Path(results[0][0]) / MANIFEST_NAME).is_file()


# ----------------------------------------------------------------------------- integrity


def _filled(tmp_path: Path, inputs: Path, payload: str = "0123456789"):
    cache = StageCache(tmp_path / "stages")
    key = stage_key("demo", [inputs], {"v": 1})
    entry = cache.get_or_compute("demo", key, _write_payload(payload))
    return cache, key, entry


def test_manifest_records_size_and_checksum_of_every_output(tmp_path: Path, inputs: Path) -> None:
    _, _, entry = _filled(tmp_path, inputs)
    outputs = json.loads((entry / MANIFEST_NAME).read_text())["outputs"]
    assert outputs == [{"path": "payload.txt", "size": 10, "sha256": file_digest(entry / "payload.txt")}]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda e: (e / "payload.txt").write_text("01234"), "has 5 bytes, the manifest says 10"),
        (lambda e: (e / "payload.txt").write_text("0123456780"), "does not match its checksum"),
        (lambda e: (e / "payload.txt").unlink(), "payload.txt is missing"),
        (lambda e: (e / MANIFEST_NAME).write_text('{"key": '), "unreadable manifest"),
        (
            lambda e: (e / MANIFEST_NAME).write_text(
                json.dumps({k: v for k, v in json.loads((e / MANIFEST_NAME).read_text()).items() if k != "outputs"})
            ),
            "no file checksums",
        ),
    ],
    ids=["truncated", "same-size-corruption", "deleted-file", "broken-manifest", "legacy-manifest"],
)
def test_damaged_entry_is_moved_aside_and_recomputed(tmp_path, inputs, caplog, damage, reason) -> None:
    cache, key, entry = _filled(tmp_path, inputs)
    damage(entry)
    with caplog.at_level("WARNING", logger="recbole_letter"):
        assert cache.get("demo", key) is None
    assert reason in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recbole_letter"):
        again = cache.get_or_compute("demo", key, _write_payload("0123456789"))
    assert again == entry and (again / "payload.txt").read_text() == "0123456789"
    assert "damaged" in caplog.text and "recomputing" in caplog.text
    aside = [p for p in entry.parent.iterdir() if p.name.startswith(".damaged-")]
    assert len(aside) == 1 and aside[0].name.startswith(f".damaged-{entry.name}-")
    assert cache.get("demo", key) == entry  # now verified intact
    # a second damage keeps only the newest moved-aside copy
    (entry / "payload.txt").write_text("x")
    cache.get_or_compute("demo", key, _write_payload("0123456789"))
    assert len([p for p in entry.parent.iterdir() if p.name.startswith(".damaged-")]) == 1


def test_sweep_removes_leftovers_of_killed_writers_only(tmp_path: Path, inputs: Path) -> None:
    from recbole_letter.stages.stage_cache import _flocked

    cache, key, entry = _filled(tmp_path, inputs)
    stage_dir = entry.parent
    dead, live = "a" * 24, "b" * 24
    for name in (dead, live):
        (stage_dir / f".tmp-{name}-x1").mkdir()
        (stage_dir / f".tmp-{name}-x1" / "half.npy").write_bytes(b"partial")
    (stage_dir / f"{dead}.lock").write_bytes(b"")  # the kernel released it when the writer died
    with _flocked(stage_dir / f"{live}.lock", blocking=True):  # a writer still at work
        cache.get_or_compute("demo", key, _write_payload("unused"))  # a hit still sweeps
        names = sorted(p.name for p in stage_dir.iterdir())
        assert f".tmp-{dead}-x1" not in names and f"{dead}.lock" not in names
        assert f".tmp-{live}-x1" in names and f"{live}.lock" in names
    assert sorted(p.name for p in stage_dir.iterdir() if p.name != f".tmp-{live}-x1") == [entry.name]


def test_lock_files_do_not_accumulate(tmp_path: Path, inputs: Path) -> None:
    cache, key, entry = _filled(tmp_path, inputs)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
