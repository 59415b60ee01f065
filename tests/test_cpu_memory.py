"""cpu_memory: with reuse on, large blocks come from the heap (kept and reused) instead of fresh mappings."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from recbole_letter import cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh interpreter: the allocator setting is process-wide. Where a large block comes
# from is deterministic (page-fault counts are not: this VM's kernel reclaims idle pages on its
# own, and heap fragmentation varies run to run): glibc maps blocks above its mmap threshold
# (at most 32 MiB) as separate regions unless reuse is on, which serves them from the [heap].
_PROBE = textwrap.dedent(
    """
    import sys
    import torch
    from recbole_letter.cpu_memory import reuse_freed_memory

    def region_of(address):
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:
                    return fields[5] if len(fields) > 5 else "anonymous"
        return "?"

    applied = reuse_freed_memory(sys.argv[1] == "on")
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, above glibc's largest mmap threshold
    print(applied, region_of(x.data_ptr()))
    """
)


def _block_region(mode: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    applied, region = out.stdout.split()
    return applied, region


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere reuse_freed_memory reports False")
def test_reuse_serves_large_blocks_from_the_heap():
    assert _block_region("on") == ("True", "[heap]")
    applied, region = _block_region("off")
    assert applied == "True" and region != "[heap]", "glibc's default should map a 64 MiB block on its own"


def test_config_key_switches_it_on(monkeypatch, tiny_seq_dataset, fast_config):
    calls = []
    monkeypatch.setattr("recbole_letter.config.reuse_freed_memory", lambda enabled: calls.append(enabled))
    from recbole_letter.quick_start import build_config

    params = {**fast_config, "data_path": str(tiny_seq_dataset()), "train_neg_sample_args": None}
    for enabled in (True, False):
        build_config("SASRec", "tiny", config_dict={**params, "cpu_reuse_freed_memory": enabled})
    assert calls == [True]


def test_off_glibc_it_reports_not_applied(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.reuse_freed_memory(True) is False
