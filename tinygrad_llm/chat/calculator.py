"""The assistant's calculator: a small expression language, read and worked out here, never run as Python.

    calculate("47 + 85")                 # '132'
    calculate('"spoon"[::-1]')           # 'noops'
    calculate("repr(hex(255))")          # "'0xff'"
    calculate("1 / 0")                   # CalculatorError: division by zero

Why a calculator. A model of a million parameters can learn *which* sum a
question asks for (copy the numbers, pick the operator) long before it can
learn to carry digits; with a tool it writes the expression, the tool works
it out, and the model copies the result into its answer. nanochat gives its
chat model a Python calculator for the same reason, and Toolformer (Schick
et al. 2023) showed small models learning when to call one.

Why not Python. The model's expression is parsed with :func:`ast.parse`
(which only reads it) and then worked out by :func:`_value`, a walk over the
tree that knows a closed list of forms and nothing else:

- literals: integers, floats, strings, and lists and tuples of them;
- the operators ``+ - * / // % **`` and unary ``-`` and ``+``;
- indexing and slicing: ``"word"[0]``, ``"word"[::-1]``, ``[3, 1][1]``;
- calls of the functions in :data:`FUNCTIONS` (``len``, ``sorted``,
  ``math.gcd``, ...) and of the string methods in :data:`STRING_METHODS`
  (``"word".upper()``), positional arguments only.

There are no names other than those functions, no attribute other than
``math.`` and those methods, no comprehension, lambda, import or
assignment, and every intermediate value is bounded (:data:`LIMITS`), so an
expression cannot reach the file system, the network, the interpreter or
unbounded memory or time: it is a calculator, like the one on a desk, not
the execution of model-written code (which only the sandbox of
:mod:`tinygrad_llm.evaluate.sandbox` does, and only when asked).

The result is shown as ``print`` shows it (``str``): ``132``, ``noops``,
``[1, 2, 3]``; ``repr(...)`` gives the quoted form when the quotes are
wanted. A mistake (a form the calculator does not read, a division by
zero, a value past the limits) is a :class:`CalculatorError` with a short
message, which the assistant sees as the tool's output.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["CalculatorError", "FUNCTIONS", "STRING_METHODS", "LIMITS", "calculate"]


class CalculatorError(ValueError):
    """An expression the calculator cannot work out; the message says why in a few words."""


LIMITS = {"expression_chars": 500, "result_chars": 500, "integer_digits": 1000, "length": 10_000, "factorial": 400}
"""The bounds: an expression's length in characters, the result's (as shown), the digits of any integer, the length
of any string or list along the way, and the largest argument of ``math.factorial``."""


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "len": len, "max": max, "min": min, "sum": sum, "sorted": sorted, "round": round,
    "divmod": divmod, "pow": pow, "bin": bin, "hex": hex, "oct": oct, "chr": chr, "ord": ord,
    "int": int, "float": float, "str": str, "repr": repr, "list": list,
    "math.gcd": math.gcd, "math.lcm": math.lcm, "math.isqrt": math.isqrt, "math.sqrt": math.sqrt,
    "math.floor": math.floor, "math.ceil": math.ceil, "math.factorial": math.factorial,
}
"""The functions an expression may call, by the name it calls them with."""

STRING_METHODS = frozenset({"upper", "lower", "title", "capitalize", "swapcase", "strip", "count", "find",
                            "startswith", "endswith"})
"""The methods an expression may call on a string."""

_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}


def calculate(expression: str) -> str:
    """The value of ``expression`` as ``print`` would show it, or a CalculatorError saying why there is none."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be text")
    if len(expression) > LIMITS["expression_chars"]:
        raise CalculatorError(f"the expression is longer than {LIMITS['expression_chars']} characters")
    try:
        with warnings.catch_warnings():  # ("1abc" is a SyntaxWarning on stderr before it is an error)
            warnings.simplefilter("ignore")
            tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalculatorError("not an expression") from None
    try:
        result = str(_value(tree.body))
        if len(result) > LIMITS["result_chars"]:
            raise CalculatorError(f"a result longer than {LIMITS['result_chars']} characters")
        result.encode("utf-8")  # a lone surrogate (chr(55296)) is not text a terminal or a file can take
        return result
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, MemoryError):
        raise CalculatorError("a number too large") from None
    except UnicodeEncodeError:
        raise CalculatorError("a result that is not text (a lone surrogate)") from None
    except (TypeError, ValueError, IndexError, RecursionError) as exc:
        raise CalculatorError(" ".join(str(exc).split()) or type(exc).__name__) from None


def _bounded(value: Any) -> Any:
    """``value`` if it is within :data:`LIMITS`, else a CalculatorError."""
    _size(value)
    return value


def _size(value: Any) -> int:
    """How many items and characters ``value`` holds, nested lists counted in full, checking every number's digits
    on the way; a CalculatorError past a limit.

    The walk stops as soon as the count passes the limit, so it costs at most
    that many steps however large the value (``[[1] * 10000] * 10000`` holds
    the same inner list 10,000 times: 100,000,000 items).
    """
    if isinstance(value, complex):
        raise CalculatorError("a complex number")
    if isinstance(value, int) and value.bit_length() > 3 * LIMITS["integer_digits"] \
            and len(str(abs(value))) > LIMITS["integer_digits"]:  # (a number of 3n bits has fewer than n + 1 digits)
        raise CalculatorError(f"a number with more than {LIMITS['integer_digits']} digits")
    if isinstance(value, str):
        total = len(value)
    elif isinstance(value, (list, tuple)):
        total = 0
        for item in value:
            total += _size(item)
            if total > LIMITS["length"]:
                break
    else:
        return 1
    if total > LIMITS["length"]:
        raise CalculatorError(f"a value longer than {LIMITS['length']}")
    return total


def _value(node: ast.AST) -> Any:
    """The value of one node of the expression's tree (the forms of the module docstring; nothing else)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return _bounded(node.value)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(item) for item in node.elts]
        return _bounded(items if isinstance(node, ast.List) else tuple(items))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if not isinstance(operand, (int, float)):
            raise CalculatorError("a sign before something that is not a number")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        _check_size(node.op, left, right)
        return _bounded(_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.Subscript):
        return _bounded(_value(node.value)[_index(node.slice)])
    if isinstance(node, ast.Call):
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise CalculatorError("only plain positional arguments")
        function = _callee(node.func)
        args = [_value(arg) for arg in node.args]
        if function is math.factorial and args and isinstance(args[0], int) and args[0] > LIMITS["factorial"]:
            raise CalculatorError(f"factorial of more than {LIMITS['factorial']}")
        if function is pow and len(args) == 2:
            _check_size(ast.Pow(), *args)
        if function is round and len(args) == 2 and isinstance(args[1], int) \
                and abs(args[1]) > LIMITS["integer_digits"]:
            raise CalculatorError(f"rounding to more than {LIMITS['integer_digits']} digits")
        if function is sum and args and any(not isinstance(item, (int, float)) or isinstance(item, bool)
                                            for item in (args[0] if isinstance(args[0], (list, tuple)) else ())):
            raise CalculatorError("sum adds numbers only")
        return _bounded(function(*args))
    raise CalculatorError(f"the calculator does not read {type(node).__name__} ({ast.unparse(node)[:40]})")


def _index(node: ast.AST) -> int | slice:
    if isinstance(node, ast.Slice):
        parts = [None if part is None else _value(part) for part in (node.lower, node.upper, node.step)]
        if not all(part is None or isinstance(part, int) for part in parts):
            raise CalculatorError("slice bounds must be integers")
        return slice(*parts)
    index = _value(node)
    if not isinstance(index, int):
        raise CalculatorError("an index must be an integer")
    return index


def _callee(node: ast.AST) -> Callable[..., Any]:
    """The function a call names: one of :data:`FUNCTIONS`, or a string method bound to its string."""
    if isinstance(node, ast.Name) and node.id in FUNCTIONS:
        return FUNCTIONS[node.id]
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "math":
            name = f"math.{node.attr}"
            if name in FUNCTIONS:
                return FUNCTIONS[name]
            raise CalculatorError(f"the calculator has no {name}")
        if node.attr in STRING_METHODS:
            target = _value(node.value)
            if isinstance(target, str):
                return getattr(target, node.attr)
        raise CalculatorError(f"the calculator has no method {node.attr}")
    raise CalculatorError(f"the calculator has no function {ast.unparse(node)[:40]}")


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse a power or repetition whose result would pass the limits, before computing it."""
    if isinstance(op, ast.Pow) and isinstance(left, (int, float)) and isinstance(right, (int, float)):
        if abs(left) > 1 and right > 0 and right * math.log10(abs(left)) > LIMITS["integer_digits"]:
            raise CalculatorError(f"a number with more than {LIMITS['integer_digits']} digits")
    if isinstance(op, ast.Mult):
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) \
                    and _size(sequence) * count > LIMITS["length"]:
                raise CalculatorError(f"a value longer than {LIMITS['length']}")
    if isinstance(op, ast.Mod) and isinstance(left, str):
        raise CalculatorError("the calculator does not format strings with %")
