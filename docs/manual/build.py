"""Build the manual: refresh its code listings from the source, make its figures, and typeset one PDF.

The chapters are Markdown files (``docs/manual/0*.md``) that read well on a
forge as they are. Three kinds of content in them are never written by hand:

**Listings.** A code listing sits between two HTML comments that name where
it is cut from::

    <!-- listing: nn/tensor.py Tensor.backward -->
    ```python
    ...the code...
    ```
    <!-- /listing -->

The spec after ``listing:`` is a file (relative to the repository root) and
one of: a qualified name (``Tensor.backward``, ``GPT``, ``causal_mask``), cut
with :mod:`ast` from its ``def``/``class`` line (decorators included) to its
last line; ``#name``, the lines between the markers ``# [manual: name]`` and
``# [/manual: name]`` in that file; or nothing, the whole file. The listing
keeps the source's text exactly, less the common indentation.

**Included tables.** ``<!-- include: figures/foo.md -->`` ... ``<!-- /include -->``
holds the text of a file that a figure script wrote.

**Figures.** ``![caption](figures/foo.png)``: a picture written by the script
``figures/foo.py`` or by a script that writes several (its name is the
picture's up to the first ``.``, less a trailing ``_...``: see :func:`figure_script`).

``python docs/manual/build.py`` (``make manual``) runs each figure script whose
outputs are missing (a script's record, ``figures/<script>.json``, is the
cache: delete it, or pass ``--refresh``, to run the script again), rewrites
every listing and include block from its source (``--sync``, also done by a
build), checks that every figure and every ``benchmarks/results/`` file a
chapter names exists, and typesets ``build/manual.pdf`` with pandoc (from the
``pypandoc-binary`` package, writing Typst) and Typst (the ``typst``
package). ``--check`` only checks, and exits 1 naming every stale block, so a
listing can never silently drift from the code that runs.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

MANUAL = Path(__file__).resolve().parent
ROOT = MANUAL.parent.parent
FIGURES = MANUAL / "figures"
BUILD = MANUAL / "build"

TITLE = "tinygrad-llm: a large language model from scratch"
SUBTITLE = "The implementation manual"

_OPEN = re.compile(r"^<!-- (listing|include): (.*?) -->$")
_CLOSE = {"listing": "<!-- /listing -->", "include": "<!-- /include -->"}
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")
RESULTS = re.compile(r"benchmarks/results/[\w.-]+\.\w+")
MARK_BEGIN = "# [manual: {}]"
MARK_END = "# [/manual: {}]"


class ManualError(Exception):
    """A chapter that cannot be built: the message names the chapter, its line and the fault."""


def chapters() -> list[Path]:
    """The chapter files in reading order: ``0*.md`` sorted by name (``01-...`` to ``06-appendix.md``)."""
    return sorted(MANUAL.glob("0*.md"))


# -- listings -------------------------------------------------------------------------------------------------------


def cut(spec: str, root: Path = ROOT) -> tuple[str, str]:
    """The code a listing spec names, and the language to highlight it in (from the file's suffix).

    ``spec`` is ``"path"``, ``"path QualifiedName"`` or ``"path #marker"``; see
    the module docstring. Raises ManualError when the file, the name or the
    markers are not there.
    """
    parts = spec.split()
    if not parts or len(parts) > 2:
        raise ManualError(f"listing spec {spec!r}: expected 'path', 'path Name' or 'path #marker'")
    path = root / parts[0]
    if not path.is_file():
        raise ManualError(f"listing {spec!r}: no file {parts[0]}")
    text = path.read_text(encoding="utf-8")
    language = {".py": "python", ".cu": "cuda", ".toml": "toml", ".sh": "bash", ".json": "json"}.get(path.suffix, "")
    if len(parts) == 1:
        code = text
    elif parts[1].startswith("#"):
        code = _between_markers(text, parts[1][1:], spec)
    else:
        code = _definition(text, parts[1], spec)
    return textwrap.dedent(code).rstrip("\n") + "\n", language


def _between_markers(text: str, name: str, spec: str) -> str:
    lines = text.splitlines(keepends=True)
    begin = [i for i, line in enumerate(lines) if line.strip() == MARK_BEGIN.format(name)]
    end = [i for i, line in enumerate(lines) if line.strip() == MARK_END.format(name)]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ManualError(f"listing {spec!r}: expected one '{MARK_BEGIN.format(name)}' and, after it, one "
                          f"'{MARK_END.format(name)}' (found {len(begin)} and {len(end)})")
    return "".join(line for line in lines[begin[0] + 1:end[0]] if not line.strip().startswith("# [manual:"))


def _definition(text: str, qualified: str, spec: str) -> str:
    nodes: list[ast.AST] = [ast.parse(text)]
    for name in qualified.split("."):
        found = [node for parent in nodes for node in getattr(parent, "body", [])
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name]
        if not found:
            raise ManualError(f"listing {spec!r}: no def or class {qualified} in the file")
        nodes = found[:1]
    node = nodes[0]
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])  # type: ignore[attr-defined]
    lines = text.splitlines(keepends=True)
    return "".join(lines[first - 1:node.end_lineno])  # type: ignore[attr-defined]


def render_block(kind: str, spec: str, root: Path = ROOT) -> str:
    """What belongs between a block's opening and closing comments."""
    if kind == "listing":
        code, language = cut(spec, root)
        return f"```{language}\n{code}```\n"
    path = MANUAL / spec.strip()
    if not path.is_file():
        raise ManualError(f"include {spec!r}: no file docs/manual/{spec.strip()} (run its figure script)")
    return path.read_text(encoding="utf-8").rstrip("\n") + "\n"


@dataclass
class Block:
    """One listing or include block of a chapter: where it is, what it names, and what it holds now."""

    chapter: Path
    line: int
    kind: str
    spec: str
    start: int  # index of the first line inside the block
    stop: int   # index of the closing comment's line
    body: str


def blocks(path: Path) -> list[Block]:
    """The listing and include blocks of a chapter, in order; an unclosed block is a ManualError."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found, i = [], 0
    while i < len(lines):
        match = _OPEN.match(lines[i].rstrip("\n"))
        if match:
            kind, spec = match.groups()
            close = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == _CLOSE[kind]), None)
            if close is None:
                raise ManualError(f"{path.name}:{i + 1}: {kind} block without its '{_CLOSE[kind]}'")
            found.append(Block(path, i + 1, kind, spec, i + 1, close, "".join(lines[i + 1:close])))
            i = close
        i += 1
    return found


def stale_blocks(paths: list[Path] | None = None, root: Path = ROOT) -> list[str]:
    """One line per block whose text differs from its source (or whose source is missing); empty when all fresh."""
    problems = []
    for path in paths if paths is not None else chapters():
        try:
            for block in blocks(path):
                try:
                    if block.body != render_block(block.kind, block.spec, root):
                        problems.append(f"{path.name}:{block.line}: {block.kind} '{block.spec}' differs from "
                                        f"its source (run: python docs/manual/build.py --sync)")
                except ManualError as exc:
                    problems.append(f"{path.name}:{block.line}: {exc}")
        except ManualError as exc:
            problems.append(str(exc))
    return problems


def sync(paths: list[Path] | None = None, root: Path = ROOT) -> int:
    """Rewrite every block from its source; returns how many changed. A block that cannot resolve is an error."""
    changed = 0
    for path in paths if paths is not None else chapters():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        changed_here = 0
        for block in reversed(blocks(path)):
            try:
                fresh = render_block(block.kind, block.spec, root)
            except ManualError as exc:
                raise ManualError(f"{path.name}:{block.line}: {exc}") from None
            if fresh != block.body:
                lines[block.start:block.stop] = [fresh]
                changed_here += 1
        if changed_here:  # a chapter whose blocks are all fresh is left as it is
            path.write_text("".join(lines), encoding="utf-8")
            changed += changed_here
    return changed


# -- figures and results files --------------------------------------------------------------------------------------


def figure_script(picture: str) -> Path:
    """The script that writes ``figures/<picture>``: ``<stem>.py``, or ``<stem less _suffix>.py`` if that exists."""
    stem = Path(picture).name.split(".")[0]
    candidates = [stem]
    while "_" in stem:
        stem = stem.rsplit("_", 1)[0]
        candidates.append(stem)
    for name in candidates:
        if (FIGURES / f"{name}.py").is_file():
            return FIGURES / f"{name}.py"
    return FIGURES / f"{candidates[0]}.py"


def missing_files(paths: list[Path] | None = None) -> list[str]:
    """One line per picture, included file or results file a chapter names that does not exist."""
    problems = []
    for path in paths if paths is not None else chapters():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in IMAGE.finditer(line):
                if not (MANUAL / match["path"]).is_file():
                    problems.append(f"{path.name}:{number}: no picture {match['path']} "
                                    f"(made by {figure_script(match['path']).relative_to(ROOT)})")
            for name in RESULTS.findall(line):
                if not (ROOT / name).is_file():
                    problems.append(f"{path.name}:{number}: no results file {name}")
    return problems


def run_figures(refresh: bool = False) -> list[str]:
    """Run each figure script whose record (``figures/<script>.json``) is missing, or all with ``refresh``."""
    ran = []
    for script in sorted(FIGURES.glob("*.py")):
        if script.name.startswith("_") or (script.with_suffix(".json").is_file() and not refresh):
            continue
        print(f"manual: running {script.relative_to(ROOT)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT)
        if done.returncode != 0:
            raise ManualError(f"{script.relative_to(ROOT)} failed (exit {done.returncode})")
        if not script.with_suffix(".json").is_file():
            raise ManualError(f"{script.relative_to(ROOT)} wrote no record {script.with_suffix('.json').name}")
        ran.append(f"{script.name} ({time.perf_counter() - started:.0f} s)")
    return ran


# -- the PDF --------------------------------------------------------------------------------------------------------

_FRONT_MATTER = f"""---
title: "{TITLE}"
subtitle: "{SUBTITLE}"
papersize: a4
section-numbering: "1.1"
margin:
  x: 2.2cm
  y: 2.4cm
---

"""
_COMMENT = re.compile(r"^<!--.*?-->\n", re.MULTILINE)
_PREAMBLE = """
#show raw.where(block: true): set text(size: 7pt)
#show raw.where(block: true): block.with(fill: luma(246), inset: 6pt, radius: 2pt, width: 100%)
#show heading.where(level: 1): it => { pagebreak(weak: true); it }
"""


def manual_markdown() -> str:
    """All chapters as one Markdown text for pandoc: HTML comments dropped, pictures addressed from the manual root."""
    parts = []
    for path in chapters():
        text = _COMMENT.sub("", path.read_text(encoding="utf-8"))
        text = IMAGE.sub(lambda m: m[0].replace(f"({m['path']})", f"(/{m['path']})"), text)
        # A chapter links its neighbours and the repository by relative paths; in the PDF those are plain text.
        text = re.sub(r"\[([^\]]+)\]\((?!https?:)(?!/)[^)]+\)", r"\1", text)
        parts.append(text.rstrip("\n") + "\n")
    return "\n".join(parts)


def build_pdf(out: Path = BUILD / "manual.pdf") -> Path:
    """Typeset the chapters into ``out`` (pandoc -> Typst -> PDF); the intermediate files go to ``build/``."""
    try:
        import pypandoc
        import typst
    except ImportError as exc:
        raise ManualError(f"the PDF needs {exc.name}: pip install pypandoc-binary typst") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    BUILD.mkdir(parents=True, exist_ok=True)
    source = BUILD / f"{out.stem}.md"  # Typst reads only files under its root, the manual's folder
    source.write_text(_FRONT_MATTER + manual_markdown(), encoding="utf-8")
    body = pypandoc.convert_file(str(source), "typst", format="markdown+tex_math_dollars+pipe_tables",
                                 extra_args=["--standalone", "--toc", "--toc-depth=2", "--columns=100",
                                             ])
    # Code blocks shaded and small enough for 100-character lines; each chapter on a new page.
    marker = "#show: doc => conf("
    at = body.find(marker)
    body = body[:at] + _PREAMBLE + body[at:] if at >= 0 else _PREAMBLE + body
    typ = source.with_suffix(".typ")
    typ.write_text(body, encoding="utf-8")
    partial = out.with_name(out.name + ".partial")
    typst.compile(str(typ), output=str(partial), root=str(MANUAL))
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check listings, includes and files; exit 1 if stale")
    parser.add_argument("--sync", action="store_true", help="only rewrite listings and includes from their sources")
    parser.add_argument("--refresh", action="store_true", help="run every figure script again, not just missing ones")
    parser.add_argument("--chapter", metavar="PREFIX", help="check or sync only the chapters whose names start so")
    parser.add_argument("--out", type=Path, default=BUILD / "manual.pdf", help="where the PDF goes")
    args = parser.parse_args(argv)
    only = [p for p in chapters() if p.name.startswith(args.chapter)] if args.chapter else None
    if only == []:
        print(f"manual: no chapter's file name starts with {args.chapter!r}", file=sys.stderr)
        return 1
    try:
        if args.check:
            problems = stale_blocks(only) + missing_files(only)
            for problem in problems:
                print(f"manual: {problem}", file=sys.stderr)
            return 1 if problems else 0
        if not args.sync:
            for line in run_figures(args.refresh):
                print(f"manual: ran {line}")
        changed = sync(only)
        print(f"manual: {changed} listing(s) or table(s) refreshed from their sources")
        if args.sync:
            return 0
        problems = missing_files()
        if problems:
            raise ManualError("; ".join(problems))
        started = time.perf_counter()
        pdf = build_pdf(args.out.resolve())
        pages = _page_count(pdf)
        print(f"manual: wrote {pdf} ({pages} pages, typeset in "
              f"{time.perf_counter() - started:.1f} s)")
    except ManualError as exc:
        print(f"manual: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an --out that cannot be written, a full disk
        print(f"manual: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _page_count(pdf: Path) -> int | str:
    try:
        from pypdf import PdfReader
    except ImportError:
        return "?"
    return len(PdfReader(pdf).pages)


if __name__ == "__main__":
    sys.exit(main())
