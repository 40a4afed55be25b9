"""Durable registry snapshots: atomic saves, corrupt files set aside, the debounced saver."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tierbatch.adapters.storage.snapshot_file import (
    FORMAT_VERSION,
    MAGIC,
    DebouncedSaver,
    SnapshotError,
    SnapshotFile,
)

STATE: dict[str, Any] = {
    "version": 3,
    "models": {
        "gemini-a": {"day": "2026-11-27", "requests_today": 1234, "cooldown_until": 1.8e9},
        "gemini-b": {"day": "2026-11-27", "requests_today": 0, "cooldown_until": None},
    },
    "recent": [[1.5, 120], [2.25, 3000]],
    7: b"\x00\x01",
}


def header(version: int, payload: bytes, *, crc: int | None = None) -> bytes:
    checksum = zlib.crc32(payload) if crc is None else crc
    return struct.pack(">8sHII", MAGIC, version, len(payload), checksum)


def test_load_without_a_file_is_none(tmp_path: Path) -> None:
    assert SnapshotFile(tmp_path / "registry.snap").load() is None


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    snap = SnapshotFile(tmp_path / "registry.snap")
    snap.save(STATE)
    assert snap.load() == STATE
    assert (tmp_path / "registry.snap").read_bytes().startswith(MAGIC)


def test_a_new_save_replaces_the_old_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    snap = SnapshotFile(tmp_path / "registry.snap")
    snap.save({"n": 1})
    snap.save({"n": 2})
    assert snap.load() == {"n": 2}
    assert os.listdir(tmp_path) == ["registry.snap"]


def test_a_failed_save_keeps_the_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = SnapshotFile(tmp_path / "registry.snap")
    snap.save({"n": 1})

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SnapshotError, match="disk full"):
        snap.save({"n": 2})
    monkeypatch.undo()
    assert snap.load() == {"n": 1}
    assert os.listdir(tmp_path) == ["registry.snap"]


def test_a_save_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    SnapshotFile(tmp_path / "s").save({"a": 1})
    assert events == ["fsync", "replace", "fsync"]  # file, rename, directory


def test_state_that_msgpack_cannot_encode_is_a_snapshot_error(tmp_path: Path) -> None:
    snap = SnapshotFile(tmp_path / "s")
    with pytest.raises(SnapshotError, match="cannot be encoded"):
        snap.save({"when": object()})
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "truncated"),
        (b"garbage that is long enough to hold a header", "not a tierbatch snapshot"),
        (header(FORMAT_VERSION, b"\x81\xa1a\x01") + b"\x81\xa1a\x02", "checksum mismatch"),
        (header(FORMAT_VERSION, b"\x81\xa1a\x01") + b"\x81\xa1a", "header says"),
        (header(FORMAT_VERSION, b"\xc1") + b"\xc1", "not msgpack"),
        (header(FORMAT_VERSION, b"\x93\x01\x02\x03") + b"\x93\x01\x02\x03", "not a map"),
        (
            header(FORMAT_VERSION + 1, b"\x80") + b"\x80",
            f"incompatible format version {FORMAT_VERSION + 1}",
        ),
    ],
)
def test_an_unusable_file_is_set_aside_reported_and_loads_as_none(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "registry.snap"
    path.write_bytes(content)
    with capture_logs() as logs:
        assert SnapshotFile(path).load() is None
    assert not path.exists()
    (aside,) = tmp_path.glob("registry.snap.corrupt-*")
    assert aside.read_bytes() == content
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["path"] == str(path)
    assert problem in warning["problem"]
    assert warning["moved_to"] == str(aside)


def test_two_corrupt_files_in_the_same_second_are_both_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    snap = SnapshotFile(path)
    for content in (b"first bad file!!!!!!!!", b"second bad file!!!!!!!"):
        path.write_bytes(content)
        assert snap.load() is None
    kept = sorted(p.read_bytes() for p in tmp_path.glob("s.corrupt-*"))
    assert kept == [b"first bad file!!!!!!!!", b"second bad file!!!!!!!"]


def test_after_a_corrupt_file_a_fresh_save_works(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"junk")
    snap = SnapshotFile(path)
    assert snap.load() is None
    snap.save({"fresh": True})
    assert snap.load() == {"fresh": True}


_keys = st.text(max_size=8) | st.integers(-1000, 1000)
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=6))
def test_any_msgpack_state_round_trips(state: dict[Any, Any]) -> None:
    encoded = msgpack.packb(state, use_bin_type=True)
    from tierbatch.adapters.storage.snapshot_file import decode, encode

    assert decode(encode(encoded)) == state


# -- the debounced saver ----------------------------------------------------------


class RecordingFile(SnapshotFile):
    """Signals each save, so tests wait on an event rather than sleeping."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saved = threading.Event()
        self.states: list[dict[str, Any]] = []

    def save(self, state: Mapping[str, Any]) -> None:
        super().save(state)
        self.states.append(dict(state))
        self.saved.set()


def no_saver_thread() -> bool:
    return not any(t.name == "tierbatch-snapshot-saver" for t in threading.enumerate())


def test_the_first_change_is_saved_in_the_background(tmp_path: Path) -> None:
    file = RecordingFile(tmp_path / "s")
    state = {"n": 1}
    saver = DebouncedSaver(file, lambda: state, min_interval_s=60)
    saver.mark_dirty()
    assert file.saved.wait(timeout=5)
    assert SnapshotFile(tmp_path / "s").load() == {"n": 1}
    saver.close()
    assert no_saver_thread()


def test_changes_within_the_interval_are_coalesced_and_close_saves_the_last(
    tmp_path: Path,
) -> None:
    file = RecordingFile(tmp_path / "s")
    state = {"n": 0}
    saver = DebouncedSaver(file, lambda: dict(state), min_interval_s=3600)
    saver.mark_dirty()
    assert file.saved.wait(timeout=5)
    for n in range(1, 50):
        state["n"] = n
        saver.mark_dirty()
    assert file.states == [{"n": 0}]  # the interval has not passed
    saver.close()
    assert file.states == [{"n": 0}, {"n": 49}]
    assert SnapshotFile(tmp_path / "s").load() == {"n": 49}
    assert no_saver_thread()


def test_close_without_changes_still_saves_once_and_is_idempotent(tmp_path: Path) -> None:
    file = RecordingFile(tmp_path / "s")
    with DebouncedSaver(file, lambda: {"n": 1}, min_interval_s=60) as saver:
        pass
    saver.close()
    assert file.states == [{"n": 1}]
    assert no_saver_thread()


def test_a_failed_background_save_is_logged_and_retried(tmp_path: Path) -> None:
    file = RecordingFile(tmp_path / "s")
    calls = {"n": 0}

    def get_state() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("registry busy")
        return {"n": calls["n"]}

    with capture_logs() as logs:
        saver = DebouncedSaver(file, get_state, min_interval_s=0.01)
        saver.mark_dirty()
        assert file.saved.wait(timeout=5)
        saver.close()
    assert file.states[0] == {"n": 2}
    assert any(e["event"] == "snapshot save failed; retrying" for e in logs)
    assert no_saver_thread()


def test_the_final_save_on_close_raises_when_it_fails(tmp_path: Path) -> None:
    def get_state() -> dict[str, Any]:
        return {"bad": object()}

    saver = DebouncedSaver(SnapshotFile(tmp_path / "s"), get_state, min_interval_s=60)
    with pytest.raises(SnapshotError):
        saver.close()
    assert no_saver_thread()
