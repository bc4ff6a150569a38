"""The manual (docs/manual): every listing is the code as it is now, every file it names exists, and it typesets.

The build script's own machinery (cutting a listing by name or by markers,
finding stale blocks, rewriting them) is tested on a small repository made in
a temporary folder; the real chapters are then checked with it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANUAL = ROOT / "docs" / "manual"


def _load_build():
    spec = importlib.util.spec_from_file_location("manual_build", MANUAL / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build()

SOURCE = '''\
import os


def helper(x):
    """Double x."""
    return 2 * x


class Engine:
    @staticmethod
    def start(n):
        total = 0
        # [manual: loop]
        for i in range(n):
            total += helper(i)
        # [/manual: loop]
        return total
'''


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SOURCE)
    return tmp_path


def test_cut_by_qualified_name_keeps_decorators_and_removes_indentation(repo):
    code, language = build.cut("pkg/mod.py Engine.start", repo)
    assert language == "python"
    assert code.splitlines()[0] == "@staticmethod"
    assert code.splitlines()[1] == "def start(n):"
    assert code.endswith("    return total\n")
    assert build.cut("pkg/mod.py helper", repo)[0] == 'def helper(x):\n    """Double x."""\n    return 2 * x\n'


def test_cut_between_markers_drops_the_markers(repo):
    code, _ = build.cut("pkg/mod.py #loop", repo)
    assert code == "for i in range(n):\n    total += helper(i)\n"


def test_cut_whole_file(repo):
    assert build.cut("pkg/mod.py", repo)[0] == SOURCE


@pytest.mark.parametrize("spec, message", [
    ("pkg/none.py helper", "no file pkg/none.py"),
    ("pkg/mod.py Engine.stop", "no def or class Engine.stop"),
    ("pkg/mod.py #absent", "expected one '# [manual: absent]'"),
    ("pkg/mod.py a b", "expected 'path', 'path Name' or 'path #marker'"),
])
def test_a_listing_that_cannot_resolve_says_why(repo, spec, message):
    with pytest.raises(build.ManualError, match=re.escape(message)):
        build.cut(spec, repo)


def test_a_stale_listing_is_found_and_sync_rewrites_it(repo):
    chapter = repo / "01-test.md"
    chapter.write_text("# Test\n\n<!-- listing: pkg/mod.py helper -->\n<!-- /listing -->\n\nAfter.\n")
    assert build.stale_blocks([chapter], repo) == [
        "01-test.md:3: listing 'pkg/mod.py helper' differs from its source "
        "(run: python docs/manual/build.py --sync)"]
    assert build.sync([chapter], repo) == 1
    assert chapter.read_text() == ("# Test\n\n<!-- listing: pkg/mod.py helper -->\n```python\n"
                                   'def helper(x):\n    """Double x."""\n    return 2 * x\n'
                                   "```\n<!-- /listing -->\n\nAfter.\n")
    assert build.stale_blocks([chapter], repo) == []
    # The code changes: the chapter is stale again until the next sync.
    (repo / "pkg" / "mod.py").write_text(SOURCE.replace("2 * x", "x + x"))
    assert len(build.stale_blocks([chapter], repo)) == 1
    assert build.sync([chapter], repo) == 1
    assert "return x + x" in chapter.read_text()


def test_an_unclosed_block_is_an_error(repo):
    chapter = repo / "01-test.md"
    chapter.write_text("# Test\n<!-- listing: pkg/mod.py helper -->\n```python\n```\n")
    with pytest.raises(build.ManualError, match=r"01-test.md:2: listing block without its '<!-- /listing -->'"):
        build.blocks(chapter)


# -- the real manual ------------------------------------------------------------------------------------------------

CHAPTERS = ["01-foundations.md", "02-data.md", "03-model.md", "04-distributed.md", "05-evaluation.md",
            "06-appendix.md"]


def test_the_five_chapters_and_the_appendix_are_there_in_order():
    assert [path.name for path in build.chapters()] == CHAPTERS
    for path in build.chapters():
        titles = [line for line in _prose_lines(path) if line.startswith("# ")]
        assert len(titles) == 1, f"{path.name}: one '# ' title per chapter, found {titles}"


def _prose_lines(path):
    """The lines of a chapter outside fenced code blocks (a shell comment in a listing is no heading)."""
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            yield line


def test_every_listing_resolves_and_equals_the_code_that_runs():
    listings = [block for path in build.chapters() for block in build.blocks(path) if block.kind == "listing"]
    assert len(listings) >= 15
    assert build.stale_blocks() == []


def test_every_picture_results_file_and_included_table_exists():
    assert build.missing_files() == []
    pictures = [m["path"] for path in build.chapters() for m in build.IMAGE.finditer(path.read_text())]
    assert len(pictures) >= 10
    for picture in pictures:
        script = build.figure_script(picture)
        assert script.is_file(), f"{picture}: no figure script {script.name}"
        assert script.with_suffix(".json").is_file(), f"{script.name} has no record (run it)"


def test_every_figure_caption_says_where_it_came_from():
    for path in build.chapters():
        for match in re.finditer(r"!\[(?P<caption>[^\]]*)\]\((?P<path>[^)\s]+)\)", path.read_text()):
            assert "figures/" in match["caption"] or "benchmarks/results/" in match["caption"], (
                f"{path.name}: the caption of {match['path']} does not name its source")


def test_the_check_command_passes_on_the_manual():
    done = subprocess.run([sys.executable, str(MANUAL / "build.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_pdf_typesets_with_every_chapter(tmp_path):
    from pypdf import PdfReader

    pdf = build.build_pdf(tmp_path / "manual.pdf")
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 30
    text = "\n".join(page.extract_text() for page in reader.pages)
    for path in build.chapters():
        title = next(line for line in _prose_lines(path) if line.startswith("# "))[2:].strip()
        assert title in text, f"chapter title {title!r} not in the PDF"
    assert not (tmp_path / "manual.pdf.partial").exists()


@pytest.mark.parametrize("args, message", [
    (["--check", "--chapter", "zz"], "manual: no chapter's file name starts with 'zz'"),
    (["--out", "/proc/no-such-dir/manual.pdf"], "manual: cannot write /proc/no-such-dir"),
])
def test_bad_options_get_one_line_and_exit_1(args, message):
    done = subprocess.run([sys.executable, str(MANUAL / "build.py"), *args], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
