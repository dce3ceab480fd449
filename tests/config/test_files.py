"""Atomic file writes: readers see the old or the new bytes, secrets are never world-readable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from config.files import write_atomically


def test_replaces_the_file_and_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "index.json"
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["index.json"]


def test_sets_the_mode_asked_for(tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    write_atomically(secret, b"k", 0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public = tmp_path / "anchor.json"
    write_atomically(public, b"{}")
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "conf.json"
    write_atomically(path, b"old")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["conf.json"]
