"""lit_rec.runtime: the allocator setting the entry points apply."""

from __future__ import annotations

import platform

import pytest

from lit_rec.runtime import keep_large_buffers_on_heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_set_on_glibc(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert keep_large_buffers_on_heap() is True


def test_a_users_own_glibc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_large_buffers_on_heap() is False
