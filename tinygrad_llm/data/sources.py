"""Where text comes from: the embedded stdlib corpus, text files, JSON Lines.

A source is a re-iterable stream of ``Document``s in a fixed order (each pass re-reads
the files, so a corpus never has to sit in memory whole).  ``open_source(spec)`` makes
one from a command-line spec:

- ``"stdlib"`` (the default): the Python standard library's own source code.  Every
  Python installation carries about 30 MB of ``.py`` files, so this corpus needs no
  download and is the same on every machine with the same Python version.  Which
  files: every ``*.py`` under the running interpreter's standard-library directory
  (``sysconfig.get_paths()["stdlib"]``), test packages included (they are ordinary
  Python and nearly double the corpus), ``site-packages`` and ``dist-packages``
  excluded (installed third-party code would make the corpus depend on the
  environment).  A directory that happens to be called ``stdlib`` is ``./stdlib``.
- a directory: every regular file under it, recursively, hidden files and
  directories (names starting with ``.``) excluded;
- a glob (``data/**/*.txt``; ``**`` spans directories): the files it matches;
- a single file.

One file is one document, named by its path relative to the directory (for a glob,
the directory before the first wildcard; for a single file, its parent).  A set of
files that all end in ``.jsonl`` is read as JSON Lines instead: one document per
non-blank line, the line's ``"text"`` field, named ``<file>:<line number>``.

Order and split.  Documents come in sorted order of their relative POSIX paths (lines
in file order).  A document is in the validation split when the BLAKE2b hash of its
name falls in the lowest ``VALIDATION_PERCENT`` of the hash range, so the split is
stable across runs, machines and corpus growth: adding a file never moves another
file.  For JSON Lines the name holds the line number, so appending lines never moves
a line, while inserting one moves the lines after it.

Text is read as UTF-8.  Files that are not UTF-8 (the stdlib has a few on purpose:
encoding test fixtures) and JSON Lines lines that are not UTF-8, not JSON, or have no
string ``"text"`` field are skipped and listed in ``skipped``, never fatal.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from tinygrad_llm.data import DataError

VALIDATION_PERCENT = 2
"""Share of documents (by name hash) held out for validation, in percent."""

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
"""Directory names the stdlib corpus never descends into."""

CODE_SUFFIXES = frozenset({".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts",
                           ".rb", ".sh", ".lua", ".swift", ".kt", ".scala", ".cs", ".m"})
"""File suffixes of source code: a set of files with only these gets the code filters."""

Split = Literal["train", "validation", "all"]

Kind = Literal["code", "prose"]
"""Which quality filters and near-duplicate shingles suit a source's documents."""


@dataclass(frozen=True)
class Document:
    """One document: its name (relative path, or ``file:line`` for JSON Lines) and its text."""

    path: str
    text: str


class Source(Protocol):
    """What ``prepare`` reads: documents in a fixed order, re-readable, plus what it skipped.

    ``kind`` says whether the documents are source code or prose; ``count_documents()``
    says how many documents a pass will read (for a progress bar's total); ``inputs()``
    lists the files read with their sizes and modification times, so a caller can tell
    whether anything changed since the last run.
    """

    spec: str
    root: Path
    skipped: list[str]

    @property
    def kind(self) -> Kind: ...

    def __iter__(self) -> Iterator[Document]: ...

    def count_documents(self) -> int: ...

    def inputs(self) -> list[tuple[str, int, int]]: ...


def is_validation(name: str) -> bool:
    """True if the document called ``name`` belongs to the validation split."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < VALIDATION_PERCENT * 100


def _in_split(name: str, split: Split) -> bool:
    return split == "all" or is_validation(name) == (split == "validation")


@dataclass
class TextFiles:
    """One document per file: ``files`` are POSIX paths relative to ``root``, in reading order.

    Iterate for the ``Document``s of ``split``; ``skipped`` then lists the files of the
    last pass that were not valid UTF-8.
    """

    root: Path
    files: list[str]
    split: Split = "all"
    spec: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        """``"code"`` if every file has a source-code suffix, else ``"prose"``."""
        return "code" if all(PurePosixPath(f).suffix in CODE_SUFFIXES for f in self.files) else "prose"

    def paths(self) -> list[str]:
        """Relative paths of this split's files, in order."""
        return [p for p in self.files if _in_split(p, self.split)]

    def __iter__(self) -> Iterator[Document]:
        self.skipped = []
        for relative in self.paths():
            try:
                text = (self.root / relative).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                self.skipped.append(relative)
                continue
            yield Document(relative, text)

    def texts(self) -> Iterator[str]:
        """Just the documents' texts, in order."""
        return (doc.text for doc in self)

    def count_documents(self) -> int:
        """How many files a pass reads (the ones that turn out not to be UTF-8 are then skipped)."""
        return len(self.paths())

    def inputs(self) -> list[tuple[str, int, int]]:
        """``(relative path, size in bytes, mtime in ns)`` of every file, in order."""
        return _stat_all(self.root, self.files)


class StdlibCorpus(TextFiles):
    """The standard-library corpus (see the module docstring), or one split of it."""

    def __init__(self, split: Split = "all", root: Path | None = None) -> None:
        root = stdlib_root() if root is None else Path(root)
        super().__init__(root, stdlib_files(root), split, spec="stdlib")


@dataclass
class JsonLines:
    """JSON Lines files (POSIX paths relative to ``root``): one document per line's ``"text"``.

    Blank lines are ignored.  ``skipped`` lists, as ``file:line``, the lines of the
    last pass that were not UTF-8, not JSON, or had no string ``"text"`` field.
    """

    root: Path
    files: list[str]
    split: Split = "all"
    spec: str = ""
    skipped: list[str] = field(default_factory=list)
    text_field: str = "text"

    @property
    def kind(self) -> Kind:
        """JSON Lines corpora are taken to be prose."""
        return "prose"

    def __iter__(self) -> Iterator[Document]:
        self.skipped = []
        for name, raw in self._lines():
            text = self._text_of(raw)
            if text is None:
                self.skipped.append(name)
            else:
                yield Document(name, text)

    def count_documents(self) -> int:
        """How many lines a pass reads (the unreadable ones are then skipped); reads the files once."""
        return sum(1 for _ in self._lines())

    def _lines(self) -> Iterator[tuple[str, bytes]]:
        """``(name, raw line)`` of every non-blank line of this split, in order."""
        for relative in self.files:
            with open(self.root / relative, "rb") as f:
                for number, raw in enumerate(f, 1):
                    name = f"{relative}:{number}"
                    if raw.strip() and _in_split(name, self.split):
                        yield name, raw

    def _text_of(self, raw: bytes) -> str | None:
        """The line's text field, or None if the line is not UTF-8 JSON with a string there."""
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
            return None
        text = record.get(self.text_field) if isinstance(record, dict) else None
        return text if isinstance(text, str) else None

    def inputs(self) -> list[tuple[str, int, int]]:
        """``(relative path, size in bytes, mtime in ns)`` of every file, in order."""
        return _stat_all(self.root, self.files)


def open_source(spec: str) -> Source:
    """The source that ``spec`` names: ``"stdlib"``, a directory, a glob or a file.

    Raises ``DataError`` if the path does not exist or names no files.
    """
    if spec == "stdlib":
        return StdlibCorpus()
    expanded = os.path.expanduser(spec)
    if _has_wildcard(expanded):
        root = _glob_root(expanded)
        matches = sorted(Path(m).relative_to(root).as_posix()
                         for m in glob.glob(expanded, recursive=True) if os.path.isfile(m))
        if not matches:
            raise DataError(f"{spec}: no files match")
        return _file_source(root, matches, spec)
    path = Path(expanded)
    if path.is_dir():
        files = _visible_files(path)
        if not files:
            raise DataError(f"{spec}: the directory holds no files")
        return _file_source(path, files, spec)
    if path.is_file():
        return _file_source(path.parent, [path.name], spec)
    raise DataError(f"{spec}: no such file or directory")


def _file_source(root: Path, files: list[str], spec: str) -> TextFiles | JsonLines:
    """JSON Lines if every file ends in ``.jsonl``, else plain text files."""
    if all(f.endswith(".jsonl") for f in files):
        return JsonLines(root, files, spec=spec)
    return TextFiles(root, files, spec=spec)


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _glob_root(pattern: str) -> Path:
    """The directory part of ``pattern`` before its first wildcard (``data/**/*.txt`` -> ``data``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_wildcard(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _visible_files(directory: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``directory``, hidden ones excluded, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        found += [(base / name).relative_to(directory).as_posix() for name in filenames
                  if not name.startswith(".") and (base / name).is_file()]
    return sorted(found)


def _stat_all(root: Path, files: list[str]) -> list[tuple[str, int, int]]:
    stats = [(f, (root / f).stat()) for f in files]
    return [(f, st.st_size, st.st_mtime_ns) for f, st in stats]


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the corpus's ``.py`` files under ``root``, sorted."""
    root = stdlib_root() if root is None else root
    paths = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(relative.parts[:-1]) and path.is_file():
            paths.append(relative.as_posix())
    return sorted(paths)
