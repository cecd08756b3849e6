"""Safe writes (`rcnnlab.files`): the old file or the new one, never half a file or a .tmp, and a
failed write is an OSError that names the file."""

from __future__ import annotations

import errno
from collections import namedtuple

import pytest
import torch

from rcnnlab import files
from rcnnlab.files import atomic_writer, replacing, write_atomic
from rcnnlab.runs.checkpoint import load_checkpoint, save_checkpoint

Usage = namedtuple("Usage", "total used free")


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_atomic(path, "old")
    with atomic_writer(path) as fh:
        fh.write("new")
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["a.txt"]
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(path, "old")
    with pytest.raises(OSError) as caught, atomic_writer(path) as fh:
        fh.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # what a write raises: no name
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_an_interrupt_or_a_bug_passes_through_unchanged(tmp_path):
    path = tmp_path / "a.png"
    for error in (KeyboardInterrupt(), ValueError("a bug"), RuntimeError("shape mismatch")):
        with pytest.raises(type(error)) as caught, replacing(path) as tmp:
            tmp.write_bytes(b"half")
            raise error
        assert caught.value is error
    assert not list(tmp_path.iterdir())


def test_torch_reporting_a_full_disk_is_an_enospc_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch.save on a full disk raises "[enforce fail at inline_container.cc:672] .
    unexpected pos 704 vs 598" (seen on a 2 MB tmpfs): a RuntimeError that names nothing."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def full(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - 4096, 4096))
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"epoch": 2})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert load_checkpoint(path)["epoch"] == 1 and not list(tmp_path.glob("*.tmp"))
    # with room left, the same failure is a write error of the disk, still naming the file
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: Usage(2**40, 0, 2**40))
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"epoch": 2})
    assert caught.value.errno == errno.EIO and caught.value.filename == str(path)


def test_a_folder_where_the_file_goes_is_named_before_anything_is_written(tmp_path):
    (tmp_path / "figs").mkdir()
    with pytest.raises(IsADirectoryError) as caught, replacing(tmp_path / "figs"):
        pass
    assert caught.value.filename == str(tmp_path / "figs")
    assert [p.name for p in tmp_path.iterdir()] == ["figs"]
