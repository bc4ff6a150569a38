"""Fine-tuning data: JSON Lines in both formats and every bad line, generated questions answered correctly (recomputed
here from the question's text) and held out by their parameters, docstring pairs that re-join into the original
function and are held out by file, ChatterBot's deduplicated conversations, the default mix."""

from __future__ import annotations

import ast
import importlib
import json
import math
import operator
import re
import textwrap
from pathlib import Path

import pytest

import tinygrad_llm.chat.data as data
from tinygrad_llm.chat.calculator import calculate
from tinygrad_llm.chat.data import (
    SPLITS,
    ChatDataError,
    builtin_mix,
    chatterbot_conversations,
    chatterbot_stats,
    docstring_functions,
    docstring_pairs,
    exact_match,
    generated_instructions,
    generated_items,
    hash_split,
    read_chat_jsonl,
)
from tinygrad_llm.chat.format import check_conversation, message_text
from util.files import package_file

# -- JSON Lines -----------------------------------------------------------------------------------------------------


def write_lines(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


def test_jsonl_reads_both_formats_and_skips_blank_lines(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!", "weight": 1}], "id": 7}
    alpaca = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    bare = {"instruction": "Say hi.", "output": "hi"}
    path = write_lines(tmp_path / "chat.jsonl", "\ufeff" + json.dumps(chat), "", "   ", json.dumps(alpaca),
                       json.dumps(bare), "")
    assert read_chat_jsonl(path) == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
    ]


GOOD = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})


@pytest.mark.parametrize("bad, complaint", [
    (b'{"instruction": "caf\xe9", "output": "x"}', "not UTF-8"),
    ('{"messages": [', "not JSON"),
    ('[{"role": "user", "content": "a"}]', "expected a JSON object, found list"),
    ('{"prompt": "a", "completion": "b"}', "neither a chat record"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "must end with the assistant"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', "has the role 'bot'"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "expected the user"),
    ('{"messages": []}', "non-empty list"),
    ('{"instruction": "a"}', "'output' must be a string"),
    ('{"instruction": " ", "output": "b"}', "instruction is empty"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad: str | bytes, complaint: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", GOOD, "", bad, GOOD)
    with pytest.raises(ChatDataError) as error:
        read_chat_jsonl(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ") and complaint in message and "\n" not in message


def test_jsonl_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ChatDataError, match=re.escape(f"{tmp_path / 'absent.jsonl'}: cannot read")):
        read_chat_jsonl(tmp_path / "absent.jsonl")
    for name, content in (("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n")):
        with pytest.raises(ChatDataError, match=re.escape(f"{tmp_path / name}: no conversations")):
            read_chat_jsonl(write_lines(tmp_path / name, content))
    assert issubclass(ChatDataError, ValueError)


# -- Generated instructions -----------------------------------------------------------------------------------------

ARITHMETIC = {"add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul)}
WORD_TASKS = {"reverse": lambda w: "".join(reversed(w)), "upper": lambda w: w.upper(),
              "letters": lambda w: str(len(w)), "first": lambda w: w[:1], "last": lambda w: w[-1:]}
LIST_TASKS = {"sort": lambda xs: json.dumps(sorted(xs)), "max": lambda xs: str(max(xs)),
              "min": lambda xs: str(min(xs)), "length": lambda xs: str(len(xs)), "sum": lambda xs: str(sum(xs))}
UNITS = {"km_to_meters": 1000, "meters_to_centimeters": 100, "hours_to_minutes": 60, "minutes_to_seconds": 60,
         "days_to_hours": 24, "kg_to_grams": 1000, "meters_to_km": -1000, "grams_to_kg": -1000}
"""Conversion factors; negative: divide by it."""


def recompute(family: str, question: str) -> tuple[tuple, str]:
    """The parameters read back out of ``question`` and the answer worked out from them, independently of data.py."""
    if family in ARITHMETIC:
        symbol, function = ARITHMETIC[family]
        assert f" {symbol} " in question
        a, b = map(int, re.findall(r"\d+", question))
        return (a, b), str(function(a, b))
    if family in WORD_TASKS:
        (word,) = re.findall(r'"([a-z]+)"', question)
        return (word,), WORD_TASKS[family](word)
    if family in LIST_TASKS:
        values = json.loads(re.search(r"\[[\d, ]*\]", question).group())
        return (tuple(values),), LIST_TASKS[family](values)
    if family in UNITS:
        source, target = family.split("_to_")
        assert source in question and target in question
        (n,) = map(int, re.findall(r"\d+", question))
        factor = UNITS[family]
        if factor < 0:
            assert n % -factor == 0
            return (n // -factor,), str(n // -factor)
        return (n,), str(n * factor)
    if family.startswith("call_"):
        (expression,) = re.findall(r"`([^`]+)`", question)
        name, arguments = re.fullmatch(r"([\w.]+)\((.*)\)", expression).groups()
        assert name == family.removeprefix("call_")
        return ast.literal_eval(f"({arguments},)"), repr(eval(expression, {"math": math}))
    assert family == "module_of"
    (name,) = re.findall(r"`(\w+)`", question)
    return (name,), "<module>"


@pytest.fixture(scope="module")
def generated() -> dict[str, list[data.Instruction]]:
    return {"train": generated_items("train", 20_000), "val": generated_items("val", 500),
            "test": generated_items("test", 500)}


def test_generated_answers_are_correct(generated: dict[str, list[data.Instruction]]) -> None:
    families = set()
    for items in generated.values():
        for item in items:
            params, answer = recompute(item.family, item.question)
            assert params == item.params, item
            if item.family == "module_of":
                module = importlib.import_module(item.answer)
                assert getattr(module, params[0]).__module__ == item.answer
            else:
                assert answer == item.answer, item
            if item.family == "module_of":  # answered from memory
                reply = item.answer
            else:  # the expression, the calculator's output, then the answer
                assert item.expression is not None and calculate(item.expression) == item.answer, item
                reply = [{"type": "calculator", "text": item.expression},
                         {"type": "calculator_output", "text": item.answer}, {"type": "text", "text": item.answer}]
            assert item.messages() == [{"role": "user", "content": item.question},
                                       {"role": "assistant", "content": reply}]
            assert message_text(item.messages()[1]) == item.answer
            assert len(item.question) <= 80 and len(item.answer) <= 40
            families.add(item.family)
    assert families == {task.family for task in data.TASKS}
    assert len({item.question for item in generated["train"]}) > 1000


def test_generated_splits_are_disjoint_in_parameters(generated: dict[str, list[data.Instruction]]) -> None:
    keys = {}
    for split, items in generated.items():
        assert len(items) == {"train": 20_000, "val": 500, "test": 500}[split]
        keys[split] = {(item.family, recompute(item.family, item.question)[0]) for item in items}
        assert len(keys[split]) == len(items), "a question repeats within a split"
        assert all(hash_split(f"{item.family}:{item.params!r}", 0.2) == split for item in items)
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    # the phrasing does not pick the split: every wording of a test question is a test question
    test_words = {params for family, params in keys["test"] if family == "reverse"}
    assert not {params for family, params in keys["train"] if family == "reverse"} & test_words


def test_hash_split_proportions() -> None:
    counts = dict.fromkeys(SPLITS, 0)
    for a in range(100):
        for b in range(100):
            counts[hash_split(f"add:{(a, b)!r}", 0.2)] += 1
    assert 7700 < counts["train"] < 8300 and 850 < counts["val"] < 1150 and 850 < counts["test"] < 1150
    assert hash_split("x", 0.2) == hash_split("x", 0.2)


def test_generated_is_deterministic_per_seed() -> None:
    first = generated_instructions("val", 300, seed=3)
    assert first == generated_instructions("val", 300, seed=3)
    assert first != generated_instructions("val", 300, seed=4)
    assert generated_instructions("val", 100, seed=3) == first[:100]
    for conversation in first:
        assert check_conversation(conversation) == conversation


def test_generated_asking_for_more_than_a_split_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    multiply = next(task for task in data.TASKS if task.family == "mul")
    monkeypatch.setattr(data, "GROUPS", {"arithmetic": (multiply,)})
    assert len(generated_items("test", 20)) == 20
    with pytest.raises(ChatDataError, match="could not draw 441 distinct test questions"):
        generated_items("test", 441)
    with pytest.raises(ChatDataError, match="unknown split 'dev'"):
        generated_items("dev", 1)


def test_exact_match_strips_whitespace_only() -> None:
    assert exact_match(" 42\n", "42") and exact_match("olleh", " olleh ")
    assert not exact_match("OLLEH", "olleh") and not exact_match("[1,2]", "[1, 2]") and not exact_match("42.", "42")


# -- Docstring pairs ------------------------------------------------------------------------------------------------


def original_node(root: Path, function: data.DocstringFunction) -> tuple[ast.AST, list[str]]:
    """The function's node in its file (found by name and line) and the file's lines."""
    source = (root / function.path).read_text(encoding="utf-8").replace("\r\n", "\n")
    tree = ast.parse(source)
    scope, *names = function.name.split(".")[::-1]
    body = tree.body
    for name in reversed(names):
        body = next(node for node in body if isinstance(node, ast.ClassDef) and node.name == name).body
    node = next(node for node in body if getattr(node, "name", None) == scope and node.lineno == function.lineno)
    return node, source.split("\n")


def assert_is_original(root: Path, function: data.DocstringFunction) -> None:
    """prompt + body parses as one function and, indented back, is the original's lines and syntax tree."""
    text = function.text
    parsed = ast.parse(text).body
    assert len(parsed) == 1 and isinstance(parsed[0], ast.FunctionDef | ast.AsyncFunctionDef)
    assert ast.get_docstring(ast.parse(function.prompt + "    pass\n").body[0]) == ast.get_docstring(parsed[0])
    node, lines = original_node(root, function)
    indent = lines[node.lineno - 1][:node.col_offset]
    original = lines[node.lineno - 1:node.end_lineno]
    assert [indent + line if line.strip() else line for line in text.split("\n")[:-1]] == original
    if indent:
        parsed = ast.parse("class C:\n" + textwrap.indent(text, indent)).body[0].body
    node.decorator_list = []
    assert ast.dump(parsed[0]) == ast.dump(node)


@pytest.fixture(scope="module")
def stdlib_functions() -> dict[str, list[data.DocstringFunction]]:
    return {split: docstring_functions(split) for split in SPLITS}


def test_docstring_pairs_rejoin_into_the_original_function(stdlib_functions) -> None:
    root = data.stdlib_root()
    checked = 0
    for split in ("val", "test"):
        for function in stdlib_functions[split]:
            assert_is_original(root, function)
            assert len(function.text) <= 600
            checked += 1
    assert checked > 100
    names = [function.name for function in stdlib_functions["val"]]
    assert any("." in name for name in names) and any("." not in name for name in names)


def test_docstring_splits_are_disjoint_by_file(stdlib_functions) -> None:
    files = {split: {f.path for f in functions} for split, functions in stdlib_functions.items()}
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    sizes = {split: len(functions) for split, functions in stdlib_functions.items()}
    assert sizes["train"] > 3000 and sizes["val"] > 30 and sizes["test"] > 30
    for split, functions in stdlib_functions.items():
        assert all(hash_split(f.path, 0.1) == split for f in functions)
        assert all(not {"test", "tests", "idle_test", "site-packages"} & set(f.path.split("/")) for f in functions)
        assert [(f.path, f.lineno) for f in functions] == sorted((f.path, f.lineno) for f in functions)
    assert docstring_functions("val") == stdlib_functions["val"]
    assert docstring_functions("val", limit=5) == stdlib_functions["val"][:5]
    assert docstring_pairs("val", limit=3) == [f.messages() for f in stdlib_functions["val"][:3]]
    assert all(len(f.text) <= 300 for f in docstring_functions("val", max_chars=300))


CORPUS = {
    "pkg/good.py": '''\
        import functools


        def add(a, b):
            """Add two numbers."""
            return a + b


        @functools.cache
        async def fetch(url: str,
                        retries: int = 3) -> bytes:
            """Fetch a URL.

            Tries a few times.
            """
            # a comment before the body
            return url.encode() * retries


        class Box:
            """A box."""

            def size(self):
                """The size."""
                return 3

            class Lid:
                def colour(self):
                    \'\'\'The lid's colour.\'\'\'
                    return "red"

            def shifted(self):
                """Text that leaves the method's indentation:
        this line is further left."""
                return None


        def one_line(): "doc"; return 1


        def only_doc():
            """Nothing else."""


        def stub():
            """A stub."""
            pass


        def undocumented():
            return 2


        def long():
            """Long."""
            return [''' + "1, " * 200 + ''']


        if True:
            def hidden():
                """Not at module level."""
                return 4
        ''',
    "pkg/latin.py": b'def f():\n    """caf\xe9"""\n    return 1\n',
    "pkg/broken.py": 'def f(:\n    """Broken."""\n    return 1\n',
    "pkg/tests/test_it.py": 'def test():\n    """A test."""\n    assert True\n',
    "test/helper.py": 'def helper():\n    """A helper."""\n    return 1\n',
    "pkg/notes.txt": 'def f():\n    """Not Python."""\n    return 1\n',
}


def test_docstring_functions_of_a_crafted_corpus(tmp_path: Path) -> None:
    for name, content in CORPUS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
    found = [f for split in SPLITS for f in docstring_functions(split, tmp_path)]
    assert sorted(f.name for f in found) == ["Box.Lid.colour", "Box.size", "add", "fetch"]
    for function in found:
        assert_is_original(tmp_path, function)
    by_name = {f.name: f for f in found}
    assert by_name["add"].messages() == [{"role": "user", "content": 'def add(a, b):\n    """Add two numbers."""\n'},
                                         {"role": "assistant", "content": "    return a + b\n"}]
    assert by_name["fetch"].prompt.startswith("async def fetch(url: str,\n")
    assert by_name["fetch"].body.startswith("    # a comment before the body\n")
    assert by_name["Box.Lid.colour"].text == "def colour(self):\n    '''The lid's colour.'''\n    return \"red\"\n"
    assert {f.path for f in found} == {"pkg/good.py"}
    longer = [f.name for split in SPLITS for f in docstring_functions(split, tmp_path, max_chars=2000)]
    assert "long" in longer
    with pytest.raises(ChatDataError, match="not a folder"):
        docstring_functions("train", tmp_path / "absent")


# -- ChatterBot -----------------------------------------------------------------------------------------------------

needs_chatterbot = pytest.mark.skipif(package_file("chatterbot-corpus", "chatterbot_corpus") is None,
                                      reason=f"chatterbot-corpus is not installed ({data.CHATTERBOT_INSTALL})")


def normalized(conversation: list[dict[str, str]]) -> tuple[str, ...]:
    return tuple(" ".join(message["content"].split()).casefold() for message in conversation)


@needs_chatterbot
def test_chatterbot_counts_and_deduplication() -> None:
    # chatterbot-corpus 1.3.3: 21 English files, 2,026 conversations, one of them a string rather than a list
    assert chatterbot_stats() == {"files": 21, "conversations": 2026, "skipped": 1, "distinct": 898}
    splits = {split: chatterbot_conversations(split) for split in SPLITS}
    everything = [conversation for conversations in splits.values() for conversation in conversations]
    assert len(everything) == 898
    assert len({normalized(conversation) for conversation in everything}) == 898
    assert len(splits["train"]) > 700 and len(splits["val"]) > 20 and len(splits["test"]) > 20
    for conversation in everything:
        assert check_conversation(conversation) == conversation
        assert [m["role"] for m in conversation] == ["user", "assistant"] * (len(conversation) // 2)
        assert all(m["content"] and m["content"] == m["content"].strip() for m in conversation)
    firsts = {split: {normalized(c)[0] for c in conversations} for split, conversations in splits.items()}
    assert not firsts["train"] & firsts["val"] and not firsts["train"] & firsts["test"]
    assert not firsts["val"] & firsts["test"]
    assert chatterbot_conversations("val") == splits["val"]


def test_chatterbot_reads_yaml_scalars_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    english = tmp_path / "chatterbot_corpus/data/english"
    english.mkdir(parents=True)
    (english / "a.yml").write_text(textwrap.dedent("""\
        categories:
        - test
        conversations:
        - - Are you a robot?
          - yes
          - Really?
        - - When did it happen?
          - 1984
        - - Only one line
        - just a string
        - - "  are YOU a   robot? "
          - Yes
        """), encoding="utf-8")
    (english / "b.yml").write_text("conversations:\n- - Is it on?\n  - off\n", encoding="utf-8")
    (english / "notes.txt").write_text("conversations:\n- - not a\n  - corpus file\n")
    monkeypatch.setattr(data, "package_file", lambda distribution, relative: tmp_path / relative)
    assert chatterbot_stats() == {"files": 2, "conversations": 6, "skipped": 2, "distinct": 3}
    everything = sorted((c for split in SPLITS for c in chatterbot_conversations(split)), key=normalized)
    assert everything == [
        [{"role": "user", "content": "Are you a robot?"}, {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "Is it on?"}, {"role": "assistant", "content": "off"}],
        [{"role": "user", "content": "When did it happen?"}, {"role": "assistant", "content": "1984"}],
    ]


def test_chatterbot_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "package_file", lambda distribution, relative: None)
    for call in (chatterbot_stats, lambda: chatterbot_conversations("train")):
        with pytest.raises(ChatDataError, match=r"chatterbot-corpus is not installed \(pip install --no-deps "):
            call()


# -- The default mix ------------------------------------------------------------------------------------------------


@needs_chatterbot
def test_builtin_mix() -> None:
    mix = builtin_mix("val", seed=1)
    assert set(mix) == {"instructions", "docstrings", "chatterbot"}
    assert mix["instructions"] == generated_instructions("val", 500, seed=1)
    assert mix["docstrings"] == docstring_pairs("val") and mix["chatterbot"] == chatterbot_conversations("val")
    for conversations in mix.values():
        assert conversations
        for conversation in conversations:
            assert check_conversation(conversation) == conversation
