"""Atomic writes: the content and mode of the new file, and what a failure leaves behind.

A failure must leave the old file as it was and no temporary file, and its error must
name the file the caller asked for, not the hidden temporary one.  The full disk is
real: a 1 MiB tmpfs (mounting one needs root) and a file-size limit (``RLIMIT_FSIZE``,
for anyone), each exercised in a child process that tries to write 3 MiB.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from util.files import atomic_write, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 20
OLD = b"the previous checkpoint"

WRITE_TOO_MUCH = """
import json, sys
from util.files import atomic_write_bytes
try:
    atomic_write_bytes(sys.argv[1], bytes(3 << 20))
except OSError as error:
    print(json.dumps({"errno": error.errno, "filename": error.filename, "message": str(error)}))
"""


def test_writes_the_content_with_the_usual_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "tokenizer.txt"
    atomic_write_bytes(target, b"old")
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert os.listdir(tmp_path) == ["tokenizer.txt"]


def test_an_error_about_the_temporary_file_names_the_target(tmp_path):
    target = tmp_path / "meta.json"
    target.write_bytes(OLD)

    def refuse(tmp: str) -> None:
        raise OSError(errno.EACCES, "Permission denied", tmp)

    with pytest.raises(PermissionError) as caught:
        atomic_write(target, refuse)
    assert (caught.value.errno, caught.value.filename) == (errno.EACCES, str(target))
    assert str(caught.value) == f"[Errno {errno.EACCES}] Permission denied: '{target}'"
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["meta.json"]


def test_an_error_without_errno_or_file_name_names_the_target(tmp_path):
    target = tmp_path / "plot.png"

    def fail(tmp: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match=f"^{target}: disk full$"):
        atomic_write(target, fail)
    assert os.listdir(tmp_path) == []


def test_an_error_about_another_file_is_left_as_it_is(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write(tmp_path / "copy.txt", lambda tmp: shutil.copyfile(missing, tmp))
    assert caught.value.filename == str(missing)
    assert os.listdir(tmp_path) == []


def test_a_missing_directory_is_named_by_the_target(tmp_path):
    target = tmp_path / "no-such-directory" / "meta.json"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write_bytes(target, b"{}")
    assert caught.value.filename == str(target)


def test_other_exceptions_pass_through_and_the_temporary_file_is_removed(tmp_path):
    def interrupted(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.bin", interrupted)
    assert os.listdir(tmp_path) == []


def limit_file_size() -> None:
    """In the child: files may not grow past LIMIT, and exceeding it is an EFBIG error, not a signal."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize("limit", ["full_tmpfs", "file_size_limit"])
def test_a_full_disk_names_the_target_and_leaves_the_old_file(limit, tmp_path, request):
    directory = request.getfixturevalue("small_tmpfs") if limit == "full_tmpfs" else tmp_path
    target = directory / "model.safetensors"
    target.write_bytes(OLD)
    child = subprocess.run([sys.executable, "-c", WRITE_TOO_MUCH, str(target)], cwd=ROOT, capture_output=True,
                           text=True, check=True, preexec_fn=None if limit == "full_tmpfs" else limit_file_size)
    error = json.loads(child.stdout)
    assert error["errno"] == (errno.ENOSPC if limit == "full_tmpfs" else errno.EFBIG)
    assert error["filename"] == str(target)
    assert error["message"] == f"[Errno {error['errno']}] {os.strerror(error['errno'])}: '{target}'"
    assert os.listdir(directory) == ["model.safetensors"]
    assert target.read_bytes() == OLD
