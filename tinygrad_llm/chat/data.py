"""Fine-tuning data: conversations to teach a base model to follow instructions, from files and from built-in sources.

Every source returns conversations in the chat format of
:mod:`tinygrad_llm.chat.format`: a list of ``{"role", "content"}`` messages,
an optional system message first, then user and assistant taking turns, the
assistant speaking last (the assistant's messages are what fine-tuning learns).

**Your own data** comes as JSON Lines, read by :func:`read_chat_jsonl`; a line
is either OpenAI's fine-tuning record ``{"messages": [...]}`` or an Alpaca
record ``{"instruction", "input"?, "output"}``.

**The built-in sources** need no download and are what :func:`builtin_mix`
puts together:

- :func:`generated_instructions`: short questions with one exactly checkable
  answer (arithmetic, string, list and unit tasks, questions about the standard
  library answered by calling it), made from seeded templates, so a model's
  answer can be scored by :func:`exact_match`;
- :func:`docstring_pairs`: a function's signature and docstring as the
  question, its body as the answer (HumanEval's shape), mined from the
  standard library's source;
- :func:`chatterbot_conversations`: the English small talk of the
  ``chatterbot-corpus`` package, deduplicated.

**Held-out splits.** Each source has ``train``, ``val`` and ``test`` splits,
and an item's split is decided by a stable hash of what makes it the same
item (:func:`hash_split`), never by its position or by chance: a generated
question by its task and parameters (not its wording, so the test set holds
no training question in other words), a mined function by its file (so no
test function's neighbours are trained on), a conversation by its first line.
The hash is SHA-256, so the splits are the same on every machine and in every
process (Python's own ``hash`` of a string changes per process).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygrad_llm.chat.format import ChatFormatError, Message, alpaca_to_messages, check_conversation
from tinygrad_llm.data.sources import stdlib_files, stdlib_root
from util.files import json_lines, package_file

__all__ = ["SPLITS", "ChatDataError", "hash_split", "read_chat_jsonl",
           "WORDS", "Task", "Instruction", "TASKS", "GROUPS", "generated_items", "generated_instructions",
           "exact_match",
           "DocstringFunction", "stdlib_root", "docstring_functions", "docstring_pairs",
           "CHATTERBOT_INSTALL", "chatterbot_english_dir", "chatterbot_stats", "chatterbot_conversations",
           "INSTRUCTION_COUNTS", "builtin_mix"]

SPLITS = ("train", "val", "test")


class ChatDataError(ValueError):
    """Fine-tuning data that cannot be read; the message says where (``file:line``) and what is wrong, in one line."""


def hash_split(key: str, held_out: float) -> str:
    """The split of the item identified by ``key``: ``held_out`` of all keys go to val and test, half each.

    The key's SHA-256, read as a number ``u`` in [0, 1), picks the split:
    ``train`` below ``1 - held_out``, then ``val``, then ``test``. Equal keys
    always land in the same split, and different keys spread evenly.
    """
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < 1 - held_out:
        return "train"
    return "val" if u < 1 - held_out / 2 else "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ChatDataError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")


# -- 1. JSON Lines files --------------------------------------------------------------------------------------------


def read_chat_jsonl(path: str | os.PathLike[str]) -> list[list[Message]]:
    """The conversations of a JSON Lines file, one per line; blank lines are skipped.

    A line is either a chat record, ``{"messages": [{"role": "user", "content":
    "Hi"}, {"role": "assistant", "content": "Hello!"}]}`` (the format of
    OpenAI's fine-tuning API; other keys are ignored), or an Alpaca record,
    ``{"instruction": ..., "input": ..., "output": ...}`` with ``input``
    optional (see :func:`~tinygrad_llm.chat.format.alpaca_to_messages`). Each
    conversation must pass :func:`~tinygrad_llm.chat.format.check_conversation`
    and end with the assistant's message.

    Anything else is a :class:`ChatDataError` naming ``path:line`` and the
    fault: bytes that are not UTF-8, text that is not JSON, JSON that is not an
    object, an object in neither format, or a malformed conversation. A missing
    file and a file without a single conversation are errors too.
    """
    path = Path(path)
    conversations = []
    try:
        for where, record in json_lines(path):
            try:
                conversations.append(_record_messages(record))
            except ChatFormatError as exc:
                raise ChatDataError(f"{where}: {exc}") from None
    except OSError as exc:
        raise ChatDataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    except ChatDataError:
        raise
    except ValueError as exc:  # a line that is not UTF-8, not JSON, or not an object
        raise ChatDataError(str(exc)) from None
    if not conversations:
        raise ChatDataError(f"{path}: no conversations in the file")
    return conversations


def _record_messages(record: Any) -> list[Message]:
    """One JSON Lines record as a checked conversation, or a ChatFormatError saying why not."""
    if not isinstance(record, dict):
        raise ChatFormatError(f"expected a JSON object, found {type(record).__name__}")
    if "messages" in record:
        return check_conversation(record["messages"])
    if "instruction" in record:
        return check_conversation(alpaca_to_messages(record))
    raise ChatFormatError('neither a chat record {"messages": [...]} nor an Alpaca record '
                          '{"instruction", "input", "output"}')


# -- 2. Generated instructions --------------------------------------------------------------------------------------

WORDS = tuple("""
    act age air arm art baby back ball band bank bath bear bed bell bird blue boat body bone book box boy bread bus
    cake call car card cat chair city clock cloud coat cold cook cow cup dad day desk dog door dream duck ear earth
    egg eye face farm fire fish flag floor flower fly food foot fork frog game gift girl glass gold grass green hair
    hand hat head heart hill home horse house ice ink jam job key king kite lake lamp leaf leg lion lip map milk
    moon mouse music name nest night nose note oil orange page park pen pig plan plant queen rain red ring river
    road rock roof room rose salt sand school sea seed sheep ship shoe shop sky snow song spoon star stone sun table
    tail tea time tooth town toy tree van wall water wind window wing wolf wood word yard year zoo
""".split())
"""Short common English words for the string tasks (the same list on every machine)."""

_MODULES = ("base64", "binascii", "bisect", "calendar", "collections", "colorsys", "copy", "difflib", "fnmatch",
            "fractions", "glob", "heapq", "html", "itertools", "json", "keyword", "math", "random", "re", "shlex",
            "shutil", "statistics", "string", "textwrap", "uuid", "zlib")
"""Modules whose names feed "Which module defines `name`?" (platform-independent ones only)."""

Params = tuple[Any, ...]


@dataclass(frozen=True)
class Task:
    """One kind of question: how to draw its parameters, phrase it and answer it.

    ``draw(rng)`` returns the parameters (a tuple of numbers, strings and
    tuples: the item's identity, and what its split is hashed from);
    ``fields(*params)`` the values that ``phrasings`` (``str.format`` templates
    over ``{0}``, ``{1}``, ...) show; ``solve(*params)`` the exact answer;
    ``expression(*params)``, when the task has one, what the assistant gives
    the calculator to find the answer (:mod:`~tinygrad_llm.chat.calculator`
    works it out to exactly ``solve``'s answer; a test holds every task to that).
    """

    family: str
    phrasings: tuple[str, ...]
    draw: Callable[[random.Random], Params]
    solve: Callable[..., str]
    fields: Callable[..., Params] = lambda *params: params
    expression: Callable[..., str] | None = None


@dataclass(frozen=True)
class Instruction:
    """A generated question: its task, parameters, the question as phrased, the exact answer, and the
    calculator expression that finds it (None for a question answered from memory)."""

    family: str
    params: Params
    question: str
    answer: str
    expression: str | None = None

    def messages(self) -> list[Message]:
        """The question and its answer as a user-assistant conversation.

        With an expression, the assistant's message is three parts: the
        expression for the calculator, the calculator's output (the answer),
        and the answer as text, which is what the user reads and what
        :func:`exact_match` scores.
        """
        if self.expression is None:
            reply: str | list[dict[str, str]] = self.answer
        else:
            reply = [{"type": "calculator", "text": self.expression},
                     {"type": "calculator_output", "text": self.answer}, {"type": "text", "text": self.answer}]
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": reply}]


def _pair(low: int, high: int) -> Callable[[random.Random], Params]:
    return lambda rng: (rng.randint(low, high), rng.randint(low, high))


def _word(rng: random.Random) -> Params:
    return (rng.choice(WORDS),)


def _digits(rng: random.Random) -> Params:
    return (tuple(rng.randint(0, 9) for _ in range(rng.randint(2, 6))),)


def _show_list(values: tuple[int, ...]) -> Params:
    return (str(list(values)),)


def _string_task(family: str, solve: Callable[[str], object], expression: str, *phrasings: str) -> Task:
    """A task on one word; ``expression`` is its calculator expression with ``W`` for the quoted word."""
    return Task(family, phrasings, _word, lambda word: str(solve(word)),
                expression=lambda word: expression.replace("W", f'"{word}"'))


def _list_task(family: str, solve: Callable[[list[int]], object], function: str, *phrasings: str) -> Task:
    """A task on a list of digits, answered by calling ``function`` on it."""
    return Task(family, phrasings, _digits, lambda values: str(solve(list(values))), _show_list,
                lambda values: f"{function}({list(values)})")


def _arithmetic_task(family: str, operator: str, solve: Callable[[int, int], int], high: int) -> Task:
    phrasings = (f"What is {{0}} {operator} {{1}}?", f"{{0}} {operator} {{1}} =", f"Compute {{0}} {operator} {{1}}.")
    return Task(family, phrasings, _pair(0, high), lambda a, b: str(solve(a, b)),
                expression=lambda a, b: f"{a} {operator} {b}")


def _unit_task(source: str, target: str, factor: int, *, divide: bool = False) -> Task:
    """Converting ``n`` ``source`` units (n = 2..99) to ``target``; ``divide`` asks the way back (n * factor -> n)."""
    phrasings = (f"How many {target} are in {{0}} {source}?", f"Convert {{0}} {source} to {target}.",
                 f"{{0}} {source} in {target}?")
    if divide:
        return Task(f"{source}_to_{target}", phrasings, lambda rng: (rng.randint(2, 99),), str,
                    lambda n: (n * factor,), lambda n: f"{n * factor} // {factor}")
    return Task(f"{source}_to_{target}", phrasings, lambda rng: (rng.randint(2, 99),), lambda n: str(n * factor),
                expression=lambda n: f"{n} * {factor}")


_CALLS: dict[str, tuple[Callable[..., object], Callable[[random.Random], Params]]] = {
    "len": (len, _word),
    "abs": (abs, lambda rng: (rng.randint(-99, 99),)),
    "max": (max, _pair(0, 99)),
    "min": (min, _pair(0, 99)),
    "divmod": (divmod, lambda rng: (rng.randint(0, 99), rng.randint(1, 9))),
    "pow": (pow, lambda rng: (rng.randint(0, 9), rng.randint(0, 3))),
    "round": (round, lambda rng: (rng.randint(0, 99) / 10,)),
    "bin": (bin, lambda rng: (rng.randint(0, 63),)),
    "hex": (hex, lambda rng: (rng.randint(0, 255),)),
    "chr": (chr, lambda rng: (rng.randint(97, 122),)),
    "ord": (ord, lambda rng: (chr(rng.randint(97, 122)),)),
    "math.gcd": (math.gcd, _pair(1, 99)),
    "math.isqrt": (math.isqrt, lambda rng: (rng.randint(0, 99),)),
    "math.floor": (math.floor, lambda rng: (rng.randint(0, 99) / 10,)),
    "math.ceil": (math.ceil, lambda rng: (rng.randint(0, 99) / 10,)),
    "math.factorial": (math.factorial, lambda rng: (rng.randint(0, 6),)),
}
"""Pure standard-library functions, by the name a question shows, with a drawer of small arguments."""


def _call_task(name: str) -> Task:
    """"What does `f(args)` return?", answered with the repr of what calling f on args returns, here and now
    (the calculator's expression is the call inside ``repr``, which keeps a string's quotes)."""
    function, draw = _CALLS[name]

    def call(*args: object) -> str:
        return f"{name}({', '.join(map(repr, args))})"

    return Task(f"call_{name}", ("What does `{0}` return?", "What is the value of `{0}`?", "Evaluate `{0}`."),
                draw, lambda *args: repr(function(*args)), lambda *args: (call(*args),),
                lambda *args: f"repr({call(*args)})")


@functools.cache
def _module_names() -> dict[str, str]:
    """Public callables (functions and classes) by name -> the one module of :data:`_MODULES` defining them.

    Found by introspection: the name's ``__module__`` must be the module it is
    read from (``math.sqrt.__module__ == "math"``; ``heapq.heappush`` comes from
    ``_heapq`` and is left out); names defined by two of the modules, or that
    are built-ins, are ambiguous and left out too.
    """
    import builtins

    found: dict[str, set[str]] = {}
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for name in dir(module):
            value = getattr(module, name)
            if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == module_name:
                found.setdefault(name, set()).add(module_name)
    return {name: modules.pop() for name, modules in sorted(found.items())
            if len(modules) == 1 and not hasattr(builtins, name)}


def _module_task() -> Task:
    return Task("module_of", ("Which module defines `{0}`?", "In which module is `{0}` defined?",
                              "`{0}` comes from which module?"),
                lambda rng: (rng.choice(tuple(_module_names())),), lambda name: _module_names()[name])


GROUPS: dict[str, tuple[Task, ...]] = {
    "arithmetic": (
        _arithmetic_task("add", "+", lambda a, b: a + b, 99),
        _arithmetic_task("sub", "-", lambda a, b: a - b, 99),
        _arithmetic_task("mul", "*", lambda a, b: a * b, 20),
    ),
    "strings": (
        _string_task("reverse", lambda w: w[::-1], "W[::-1]", 'Reverse "{0}".', 'Spell "{0}" backwards.',
                     'What is "{0}" reversed?'),
        _string_task("upper", str.upper, "W.upper()", 'Upper-case "{0}".', 'Write "{0}" in capital letters.',
                     'What is "{0}" in upper case?'),
        _string_task("letters", len, "len(W)", 'How many letters are in "{0}"?', 'Count the letters in "{0}".',
                     'How long is "{0}"?'),
        _string_task("first", lambda w: w[0], "W[0]", 'What is the first letter of "{0}"?', 'First letter of "{0}"?',
                     'Which letter does "{0}" start with?'),
        _string_task("last", lambda w: w[-1], "W[-1]", 'What is the last letter of "{0}"?', 'Last letter of "{0}"?',
                     'Which letter does "{0}" end with?'),
    ),
    "lists": (
        _list_task("sort", sorted, "sorted", "Sort {0}.", "Sort {0} in ascending order.", "What is {0} sorted?"),
        _list_task("max", max, "max", "What is the largest number in {0}?", "Max of {0}?",
                   "Which number in {0} is the biggest?"),
        _list_task("min", min, "min", "What is the smallest number in {0}?", "Min of {0}?",
                   "Which number in {0} is the smallest?"),
        _list_task("length", len, "len", "How many numbers are in {0}?", "What is the length of {0}?",
                   "Count the items in {0}."),
        _list_task("sum", sum, "sum", "What is the sum of {0}?", "Add up {0}.", "Sum {0}."),
    ),
    "units": (
        _unit_task("km", "meters", 1000),
        _unit_task("meters", "km", 1000, divide=True),
        _unit_task("meters", "centimeters", 100),
        _unit_task("hours", "minutes", 60),
        _unit_task("minutes", "seconds", 60),
        _unit_task("days", "hours", 24),
        _unit_task("kg", "grams", 1000),
        _unit_task("grams", "kg", 1000, divide=True),
    ),
    "stdlib": (*(_call_task(name) for name in _CALLS), _module_task()),
}
"""The tasks in five groups; generation picks a group, then a task in it, uniformly."""

TASKS: tuple[Task, ...] = tuple(task for tasks in GROUPS.values() for task in tasks)

_INSTRUCTIONS_HELD_OUT = 0.2


def generated_items(split: str, count: int, seed: int = 0) -> list[Instruction]:
    """``count`` distinct generated questions of ``split``, the same ones for the same ``seed``.

    Each draw picks a group of :data:`GROUPS`, a task of the group and the
    task's parameters, all uniformly, and a phrasing of the question; an item
    whose ``family:params`` hashes to another split (:func:`hash_split`, 80%
    train, 10% val, 10% test), or that ``split`` already holds (in any
    phrasing), is drawn again. Small tasks (``mul``'s 441 products, the units'
    98 values) run out early, after which the larger ones fill the split.
    Asking for more items than the split can hold is a ChatDataError.
    """
    _check_split(split)
    rng = random.Random(f"instructions:{split}:{seed}")
    groups = list(GROUPS.values())
    items: list[Instruction] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < count:
        attempts += 1
        if attempts > 20 * count + 10_000:
            raise ChatDataError(f"could not draw {count} distinct {split} questions (found {len(items)})")
        task = rng.choice(rng.choice(groups))
        params = task.draw(rng)
        phrasing = rng.choice(task.phrasings)
        key = f"{task.family}:{params!r}"
        if key in seen or hash_split(key, _INSTRUCTIONS_HELD_OUT) != split:
            continue
        seen.add(key)
        expression = None if task.expression is None else task.expression(*params)
        items.append(Instruction(task.family, params, phrasing.format(*task.fields(*params)), task.solve(*params),
                                 expression))
    return items


def generated_instructions(split: str, count: int, seed: int = 0) -> list[list[Message]]:
    """:func:`generated_items` as conversations: the question from the user, the answer from the assistant.

    The answer's text is the exact string and nothing else (``"42"``,
    ``"olleh"``, ``"[1, 2, 3]"``, ``"'0xff'"``, ``"math"``), so a model's
    reply can be scored with :func:`exact_match`; every task but ``module_of``
    finds it with the calculator first (:meth:`Instruction.messages`).
    """
    return [item.messages() for item in generated_items(split, count, seed)]


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` is ``answer``, after stripping leading and trailing whitespace from both.

    That is the whole normalization: case, punctuation and spacing inside the
    answer all count (``"OLLEH"`` is not ``"olleh"``, ``"[1,2]"`` is not
    ``"[1, 2]"``).
    """
    return prediction.strip() == answer.strip()


# -- 3. Docstring-to-function pairs ---------------------------------------------------------------------------------

_TEST_DIRECTORIES = frozenset({"test", "tests", "idle_test"})  # (the corpus itself skips site-packages & co.)
_DOCSTRINGS_HELD_OUT = 0.1


@dataclass(frozen=True)
class DocstringFunction:
    """A function mined from a source file: ``prompt`` is its signature and docstring, ``body`` the rest.

    ``path`` is the file's path relative to the corpus root (with ``/``),
    ``name`` the qualified name (``Class.method``), ``lineno`` the line of its
    ``def``. ``prompt + body`` is the function's source from the ``def`` line
    on, without decorators, and with a method's indentation removed from every
    line, so that it starts at column 0 as HumanEval's prompts do.
    """

    path: str
    name: str
    lineno: int
    prompt: str
    body: str

    @property
    def text(self) -> str:
        """The whole function: ``prompt + body``."""
        return self.prompt + self.body

    def messages(self) -> list[Message]:
        """The signature and docstring from the user, the body from the assistant."""
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.body}]


def docstring_functions(split: str, root: str | os.PathLike[str] | None = None, limit: int | None = None,
                        max_chars: int = 600) -> list[DocstringFunction]:
    """The documented functions of the ``.py`` files under ``root`` (the standard library by default) in ``split``.

    A file's split comes from the hash of its relative path (90% train, 5%
    val, 5% test), so all of a file's functions are in one split. Files are
    read in sorted order of their paths, functions in order of their lines;
    folders named ``test``, ``tests`` and ``idle_test`` (tests, not library
    code), ``site-packages`` and ``dist-packages`` (third-party code) and
    ``__pycache__`` are skipped, and so are files that are not UTF-8 or not
    valid Python. From each file come the module-level functions and the
    methods of module-level classes (nested classes included) that

    - have a docstring on lines of its own, after the signature,
    - have statements after it on later lines, and not just ``pass`` or ``...``,
    - are at most ``max_chars`` characters long (``prompt + body``).

    ``limit`` stops after that many functions. Parsed files are kept in memory
    (keyed by path, modification time and size), so asking for another split
    or size costs no parsing.
    """
    _check_split(split)
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise ChatDataError(f"{root}: not a folder of Python source")
    found: list[DocstringFunction] = []
    for relative, path in _python_files(root):
        if hash_split(relative, _DOCSTRINGS_HELD_OUT) != split:
            continue
        try:
            status = path.stat()
        except OSError:
            continue
        for function in _file_functions(str(path), relative, status.st_mtime_ns, status.st_size):
            if len(function.text) <= max_chars:
                found.append(function)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def docstring_pairs(split: str, root: str | os.PathLike[str] | None = None, limit: int | None = None,
                    max_chars: int = 600) -> list[list[Message]]:
    """:func:`docstring_functions` as conversations: signature and docstring from the user, the body as the answer."""
    return [function.messages() for function in docstring_functions(split, root, limit, max_chars)]


def _python_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative path with "/", path)`` of each ``.py`` file of the corpus under ``root`` (``stdlib_files``),
    outside test folders, sorted."""
    return [(relative, root / relative) for relative in stdlib_files(root)
            if _TEST_DIRECTORIES.isdisjoint(relative.split("/")[:-1])]


@functools.cache
def _file_functions(path: str, relative: str, mtime_ns: int, size: int) -> tuple[DocstringFunction, ...]:
    """Every documented function of one file (see :func:`docstring_functions`), whatever its length.

    ``mtime_ns`` and ``size`` are there to key the cache: a changed file is parsed again.
    """
    try:
        source = Path(path).read_bytes().decode("utf-8")
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    lines = source.split("\n")
    found = []
    for name, node in _definitions(tree.body):
        parts = _split_function(lines, node)
        if parts is not None:
            found.append(DocstringFunction(relative, name, node.lineno, *parts))
    return tuple(found)


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _definitions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, Function]]:
    """The functions defined directly in ``body`` and, recursively, in its classes, with qualified names."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _definitions(node.body, f"{prefix}{node.name}.")


def _split_function(lines: Sequence[str], node: Function) -> tuple[str, str] | None:
    """``(signature and docstring, body)`` of ``node`` from the file's ``lines``, dedented; None if it does not fit.

    The text runs from the ``def`` line to the function's last line. A method's
    indentation (the text before its ``def``) is removed from each line that is
    not blank (blank lines stay as they are); a function with a line that does
    not start with it (a string's continuation line further left) is left out
    rather than altered, so that putting the indentation back on the non-blank
    lines gives the original lines exactly.
    """
    body = node.body
    if ast.get_docstring(node, clean=False) is None or len(body) < 2 or node.end_lineno is None:
        return None
    docstring, first = body[0], body[1]
    if all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                       and s.value.value is Ellipsis) for s in body[1:]):
        return None
    before_docstring = lines[docstring.lineno - 1].encode("utf-8")[:docstring.col_offset].decode("utf-8", "replace")
    if before_docstring.strip() or docstring.end_lineno is None or first.lineno <= docstring.end_lineno:
        return None
    indent = lines[node.lineno - 1][:node.col_offset]
    text = lines[node.lineno - 1:node.end_lineno]
    if indent.strip() or any(line.strip() and not line.startswith(indent) for line in text):
        return None
    text = [line[len(indent):] if line.strip() else line for line in text]
    cut = docstring.end_lineno - node.lineno + 1
    return "".join(line + "\n" for line in text[:cut]), "".join(line + "\n" for line in text[cut:])


# -- 4. ChatterBot's English corpus ---------------------------------------------------------------------------------

CHATTERBOT_INSTALL = "pip install --no-deps chatterbot-corpus pyyaml"
_CHATTERBOT_HELD_OUT = 0.1


def chatterbot_english_dir() -> Path:
    """The folder of the installed ``chatterbot-corpus`` package's English YAML files, found from its metadata.

    The package is not imported (it needs nothing, but there is no reason to
    run its code to read its data).
    """
    path = package_file("chatterbot-corpus", "chatterbot_corpus/data/english")
    if path is None:
        raise ChatDataError(f"chatterbot-corpus is not installed ({CHATTERBOT_INSTALL})")
    if not path.is_dir():
        raise ChatDataError(f"{path}: missing from the installed chatterbot-corpus package")
    return path


def _normalized(line: str) -> str:
    """A line compared for duplicates: runs of whitespace as one space, case folded."""
    return " ".join(line.split()).casefold()


@functools.lru_cache(maxsize=4)
def _chatterbot_corpus(directory: str) -> tuple[dict[str, int], tuple[tuple[str, ...], ...]]:
    """``(stats, conversations)``: the English files' distinct conversations as tuples of lines, in file order.

    YAML is read with PyYAML's ``BaseLoader``, which keeps every scalar as the
    string written in the file (a safe loader would turn an answer ``yes`` into
    ``True`` and ``1984`` into an int). A conversation with fewer than two lines,
    or that is not a list of strings (``trivia.yml`` has one whose question and
    answer YAML reads as a single string), is skipped; an odd last line is
    dropped, so that the assistant speaks last; the first of several equal
    conversations (compared line by line, :func:`_normalized`) is kept.
    """
    try:
        import yaml
    except ImportError:
        raise ChatDataError(f"PyYAML is needed to read chatterbot-corpus ({CHATTERBOT_INSTALL})") from None
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    files = sorted(Path(directory).glob("*.yml"))
    if not files:
        raise ChatDataError(f"{directory}: no .yml files in the chatterbot-corpus package")
    total = skipped = 0
    kept: dict[tuple[str, ...], tuple[str, ...]] = {}
    for file in files:
        try:
            data = yaml.load(file.read_text(encoding="utf-8"), Loader=loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ChatDataError(f"{file}: cannot read it as YAML ({' '.join(str(exc).split())})") from None
        conversations = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(conversations, list):
            raise ChatDataError(f"{file}: no list of conversations")
        for lines in conversations:
            total += 1
            if not isinstance(lines, list) or len(lines) < 2 or not all(isinstance(line, str) for line in lines):
                skipped += 1
                continue
            lines = tuple(line.strip() for line in lines[:len(lines) // 2 * 2])
            kept.setdefault(tuple(map(_normalized, lines)), lines)
    stats = {"files": len(files), "conversations": total, "skipped": skipped, "distinct": len(kept)}
    return stats, tuple(kept.values())


def chatterbot_stats() -> dict[str, int]:
    """Counts of the English corpus: ``files``, ``conversations`` in them, ``skipped`` (malformed), ``distinct``.

    ``distinct`` is the number of conversations :func:`chatterbot_conversations`
    returns over the three splits: fewer than half of the conversations, as
    ``tech_support.yml`` holds 1,050 conversations but only 10 different ones
    (chatterbot-corpus 1.3.3: 21 files, 2,026 conversations, 898 distinct).
    """
    return dict(_chatterbot_corpus(str(chatterbot_english_dir()))[0])


def chatterbot_conversations(split: str) -> list[list[Message]]:
    """The distinct English conversations of ``chatterbot-corpus`` in ``split``, lines taken in turn by user and bot.

    The split comes from the hash of the first line (normalized: spacing and
    case do not matter), 90% train, 5% val, 5% test, so that conversations
    opening with the same question are all in one split.
    """
    _check_split(split)
    conversations = _chatterbot_corpus(str(chatterbot_english_dir()))[1]
    return [[{"role": ("user", "assistant")[i % 2], "content": line} for i, line in enumerate(lines)]
            for lines in conversations if hash_split(_normalized(lines[0]), _CHATTERBOT_HELD_OUT) == split]


# -- 5. The default mix ---------------------------------------------------------------------------------------------

INSTRUCTION_COUNTS = {"train": 20_000, "val": 500, "test": 500}
"""How many generated questions :func:`builtin_mix` puts in each split."""


def builtin_mix(split: str, seed: int = 0) -> dict[str, list[list[Message]]]:
    """The default fine-tuning data of ``split``, by source: generated ``instructions``, ``docstrings``, ``chatterbot``.

    Needs no download and writes no file; the standard library is parsed once
    per process (a few seconds) and kept in memory. ``seed`` picks the
    generated questions; the other sources are fixed.
    """
    _check_split(split)
    return {"instructions": generated_instructions(split, INSTRUCTION_COUNTS[split], seed),
            "docstrings": docstring_pairs(split),
            "chatterbot": chatterbot_conversations(split)}
