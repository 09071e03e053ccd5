"""`convbert.host_malloc`: glibc accepts the settings; `CONVBERT_JAX_MALLOC=system` keeps the defaults."""

import ctypes.util

import pytest

from convbert import host_malloc


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to tune")
def test_tune_is_accepted_by_glibc(monkeypatch):
    monkeypatch.delenv(host_malloc.ENV, raising=False)
    assert host_malloc.tune()


def test_system_setting_keeps_the_defaults(monkeypatch):
    monkeypatch.setenv(host_malloc.ENV, "system")
    assert not host_malloc.tune()
