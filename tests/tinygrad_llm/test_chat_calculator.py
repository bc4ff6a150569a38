"""The assistant's calculator: each form it reads gives what Python gives, everything else is refused in a line,
and nothing it is handed reaches the interpreter, names or unbounded memory."""

from __future__ import annotations

import math

import pytest

from tinygrad_llm.chat import data
from tinygrad_llm.chat.calculator import LIMITS, CalculatorError, calculate

# Expressions of every form the calculator reads. The reference is Python itself: ``eval`` of these fixed
# strings of the test (never of a model's), with ``math`` in scope, printed as print() prints.
READ = [
    "47 + 85", "0 - 30", "13 * 3", "7 / 2", "7 // 2", "-7 // 2", "7 % 3", "2 ** 10", "2 ** -1", "-5", "+5",
    "(1 + 2) * 3", "1.5 * 4", '"spoon"[::-1]', '"spoon"[0]', '"spoon"[-1]', '"spoon"[1:3]', '"spoon".upper()',
    '"Spoon".lower()', '"ab" * 3', '"ab" + "cd"', 'len("spoon")', "len([1, 2, 3])", "sorted([3, 1, 2])",
    "max([4, 9, 2])", "min(4, 9)", "sum([2, 9, 8])", "abs(-42)", "round(6.8)", "round(2.5)", "divmod(17, 5)",
    "pow(3, 4)", "bin(5)", "hex(255)", "oct(8)", "chr(97)", "ord('a')", "int('42')", "float('1.5')", "str(12)",
    "repr(hex(255))", "repr(chr(97))", "repr(divmod(7, 2))", "list('abc')", "(1, 2)", "[1, [2, 3]][1][0]",
    "math.gcd(12, 18)", "math.lcm(4, 6)", "math.isqrt(99)", "math.sqrt(2)", "math.floor(4.5)", "math.ceil(4.5)",
    "math.factorial(6)", '"a,b".count(",")', '"hello".find("l")', '"abc".startswith("a")', "  1 + 1  ",
]


@pytest.mark.parametrize("expression", READ)
def test_every_form_gives_what_python_gives(expression):
    assert calculate(expression) == str(eval(expression, {"math": math}))  # noqa: S307 (the test's own strings)


def test_every_generated_task_is_answered_exactly_by_its_expression():
    seen = set()
    for split, count in (("train", 3_000), ("test", 1_500)):
        for item in data.generated_items(split, count):
            if item.expression is not None:
                assert calculate(item.expression) == item.answer, item
                seen.add(item.family)
    assert {task.family for task in data.TASKS} - seen == {"module_of"}  # the one question answered from memory


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os')", "no function __import__"),
    ("__import__('os').system('true')", "no method system"),
    ("open('/etc/passwd')", "no function open"),
    ("eval('1')", "no function eval"),
    ("x + 1", "does not read Name"),
    ("math.pi", "does not read Attribute"),
    ("math.system(1)", "no math.system"),
    ('"a".__class__', "does not read Attribute"),
    ('"a".__class__()', "no method __class__"),
    ('"a".join(["b"])', "no method join"),
    ("(1).bit_length()", "no method bit_length"),
    ("[x for x in 'ab']", "does not read ListComp"),
    ("(lambda: 1)()", "no function"),
    ("{1: 2}", "does not read Dict"),
    ("1 if 1 else 2", "does not read IfExp"),
    ("1 < 2", "does not read Compare"),
    ("True", "does not read Constant"),
    ("None", "does not read Constant"),
    ("b'x'", "does not read Constant"),
    ("sorted([2, 1], reverse=True)", "only plain positional arguments"),
    ("max(*[1, 2])", "only plain positional arguments"),
    ("x = 1", "not an expression"),
    ("1 +", "not an expression"),
    ("", "not an expression"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("[1][3]", "index out of range"),
    ('"a"[1.5]', "an index must be an integer"),
    ("-'a'", "a sign before something that is not a number"),
    ("chr(-1)", "arg not in range"),
    ("9 ** 9 ** 9", "more than 1000 digits"),
    ("10 ** 1000", "more than 1000 digits"),
    ("pow(10, 2000)", "more than 1000 digits"),
    ("10 ** 600 * 10 ** 600", "more than 1000 digits"),
    ('"ab" * 6000', "longer than 10000"),
    ("[0] * 20000", "longer than 10000"),
    ('len(-int("9" * 1001))', "more than 1000 digits"),
    ("math.factorial(401)", "factorial of more than 400"),
    ("1 + " * 200 + "1", "longer than 500 characters"),
    ("10.0 ** 400", "a number too large"),
    # what a review found could hang or exhaust memory, each refused before the work is done
    ("[[1] * 10000] * 10000", "longer than 10000"),
    ("[[[[1] * 100] * 100] * 100] * 100", "longer than 10000"),
    ("sum([[1] * 300] * 10000, [])", "longer than 10000"),
    ("sum(['a', 'b'])", "sum adds numbers only"),
    ("round(1, -10 ** 8)", "rounding to more than 1000 digits"),
    ('"%*d" % (10 ** 9, 1)', "does not format strings with %"),
    ("chr(55296)", "not text"),
    ("(-8) ** 0.5", "a complex number"),
])
def test_what_it_does_not_read_or_cannot_bound_is_refused_in_one_line(expression, message):
    with pytest.raises(CalculatorError, match=message) as caught:
        calculate(expression)
    assert "\n" not in str(caught.value)


def test_a_malformed_number_is_refused_without_a_warning_on_stderr(capfd):
    with pytest.raises(CalculatorError, match="not an expression"):
        calculate("1abc + 2")
    assert capfd.readouterr().err == ""


def test_the_limits_are_the_documented_ones():
    assert LIMITS == {"expression_chars": 500, "result_chars": 500, "integer_digits": 1000, "length": 10_000,
                      "factorial": 400}
    assert calculate("10 ** 499") == "1" + "0" * 499
    assert calculate("10 ** 999 // 10 ** 990") == "1" + "0" * 9  # large along the way, short at the end
    assert calculate('len("ab" * 5000)') == "10000"
    assert calculate("math.factorial(400) % 1000003") == str(math.factorial(400) % 1000003)
    with pytest.raises(CalculatorError, match="a result longer than 500 characters"):
        calculate("10 ** 500")
    with pytest.raises(CalculatorError, match="a result longer than 500 characters"):
        calculate('"ab" * 300')
