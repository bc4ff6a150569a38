"""The embedded default corpus: the Python standard library's own source code.

Every Python installation carries about 30 MB of ``.py`` files, so this corpus needs
no download and is the same on every machine with the same Python version.  One
document is one file.

Which files: every ``*.py`` under the running interpreter's standard-library
directory (``sysconfig.get_paths()["stdlib"]``), test packages included (they are
ordinary Python and nearly double the corpus), ``site-packages`` and
``dist-packages`` excluded (installed third-party code would make the corpus depend
on the environment).  Files are read as UTF-8; the few that are deliberately not
UTF-8 (encoding test fixtures) are skipped and counted.

Order and split: documents come in sorted order of their relative POSIX path.  A
document is in the validation split when the BLAKE2b hash of that path falls in the
lowest ``VALIDATION_PERCENT`` of the hash range, so the split is stable across runs,
machines and corpus growth (adding a file never moves another file).
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

VALIDATION_PERCENT = 2
"""Share of documents (by path hash) held out for validation, in percent."""

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
"""Directory names never descended into."""

Split = Literal["train", "validation", "all"]


@dataclass(frozen=True)
class Document:
    """One source file: its path relative to the stdlib root, and its text."""

    path: str
    text: str


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_validation(relative_path: str) -> bool:
    """True if the document at ``relative_path`` belongs to the validation split."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < VALIDATION_PERCENT * 100


def stdlib_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the corpus's ``.py`` files under ``root``, sorted."""
    root = stdlib_root() if root is None else root
    paths = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(relative.parts[:-1]) and path.is_file():
            paths.append(relative.as_posix())
    return sorted(paths)


@dataclass
class StdlibCorpus:
    """The standard-library corpus, or one split of it, read lazily.

    Iterate over it for ``Document``s (each pass re-reads the files, so a corpus never
    sits in memory whole).  ``skipped`` lists the files of the last pass that were
    not valid UTF-8.
    """

    split: Split = "all"
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)

    def paths(self) -> list[str]:
        """Relative paths of this split's files, sorted."""
        files = stdlib_files(self.root)
        if self.split == "all":
            return files
        want_validation = self.split == "validation"
        return [p for p in files if is_validation(p) == want_validation]

    def __iter__(self) -> Iterator[Document]:
        root = stdlib_root() if self.root is None else self.root
        self.skipped = []
        for relative in self.paths():
            try:
                text = (root / relative).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                self.skipped.append(relative)
                continue
            yield Document(relative, text)

    def texts(self) -> Iterator[str]:
        """Just the documents' texts, in order."""
        return (doc.text for doc in self)
