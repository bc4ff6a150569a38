"""Quality filters at their thresholds, normalisation, and the cleaning pipeline's report.

Each rule is tested on constructed documents just inside and just outside its bound,
with the filter's other rules switched off (thresholds set so they cannot fire), so
that a test names exactly the rule it checks.
"""

from __future__ import annotations

import pytest

from tinygrad_llm.data.clean import CleaningConfig, clean_and_dedup, scan
from tinygrad_llm.data.filters import (
    CODE_FILTERS,
    C4QualityFilter,
    CodeQualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    with_thresholds,
)
from tinygrad_llm.data.normalize import normalize_text, simplify_text
from tinygrad_llm.data.sources import Document


def test_normalize_nfc_newlines_controls():
    assert normalize_text("cafe\u0301\r\nx\ry\x00\x07\tz\x85") == "caf\u00e9\nx\ny\tz"
    assert simplify_text("Hello,  World 42!\n") == "hello world 00"


def gopher(words: list[str], lines: int = 1) -> str:
    per_line = -(-len(words) // lines)
    return "\n".join(" ".join(words[i:i + per_line]) for i in range(0, len(words), per_line))


STOP2 = ["the", "and"]


@pytest.mark.parametrize(("text", "reason"), [
    (gopher(STOP2 + ["word"] * 48), None),
    (gopher(STOP2 + ["word"] * 47), "gopher_short_doc"),
    (gopher(STOP2 * 25), None),
    (gopher(STOP2 * 24 + ["the", "an"]), "gopher_below_avg_word_length"),
    (gopher(["the,,,,,,,", "and,,,,,,,"] + ["abcdefghij"] * 48), None),
    (gopher(["the,,,,,,,", "and,,,,,,,"] + ["abcdefghij"] * 47 + ["abcdefghijk"]), "gopher_above_avg_word_length"),
    (gopher(STOP2 + ["#word"] * 5 + ["word"] * 43), None),
    (gopher(STOP2 + ["#word"] * 6 + ["word"] * 42), "gopher_too_many_hashes"),
    (gopher(STOP2 + ["wo...rd"] * 5 + ["word"] * 43), None),
    (gopher(STOP2 + ["wo…rd"] * 6 + ["word"] * 42), "gopher_too_many_ellipsis"),
    (gopher(STOP2 + ["word"] * 48, lines=10).replace("\n", "\n-").replace("the", "- the"), "gopher_too_many_bullets"),
    (gopher(STOP2 + ["word"] * 48, lines=10).replace("\n", "\n-"), None),
    (gopher(STOP2 + ["word"] * 48, lines=10).replace("\n", "...\n", 3), None),
    (gopher(STOP2 + ["word"] * 48, lines=10).replace("\n", "...\n", 4), "gopher_too_many_end_ellipsis"),
    (gopher(STOP2 + ["123"] * 10 + ["word"] * 38), None),
    (gopher(STOP2 + ["123"] * 11 + ["word"] * 37), "gopher_below_alpha_threshold"),
    (gopher(["the"] + ["word"] * 49), "gopher_enough_stop_words"),
])
def test_gopher_quality_boundaries(text, reason):
    assert GopherQualityFilter()(text) == reason


NO_REPETITION = dict(max_dup_line_fraction=1.0, max_dup_para_fraction=1.0, max_dup_line_char_fraction=1.0,
                     max_dup_para_char_fraction=1.0, max_top_ngram_fraction=(), max_dup_ngram_fraction=())


def repetition(**rule) -> GopherRepetitionFilter:
    return GopherRepetitionFilter(**{**NO_REPETITION, **rule})


@pytest.mark.parametrize(("sep", "rule", "reason"), [("\n\n", "max_dup_para_fraction", "dup_para_frac"),
                                                     ("\n", "max_dup_line_fraction", "dup_line_frac")])
def test_gopher_duplicate_count_fraction(sep, rule, reason):
    check = repetition(**{rule: 0.30})
    unique = [f"part {i}" for i in range(7)]
    assert check(sep.join(unique + ["part 0"] * 3)) is None            # 3 / 10 = 0.30
    assert check(sep.join(unique + ["part 0"] * 4)) == reason          # 4 / 11 > 0.30


@pytest.mark.parametrize(("sep", "rule", "reason", "inside"), [
    ("\n\n", "max_dup_para_char_fraction", "dup_para_char_frac", 56),  # 20 / (56 + 4 + 40) = 0.20
    ("\n", "max_dup_line_char_fraction", "dup_line_char_frac", 58),    # 20 / (58 + 2 + 40) = 0.20
])
def test_gopher_duplicate_char_fraction(sep, rule, reason, inside):
    check = repetition(**{rule: 0.20})
    assert check(sep.join(["b" * inside, "a" * 20, "a" * 20])) is None
    assert check(sep.join(["b" * (inside - 1), "a" * 20, "a" * 20])) == reason


def test_gopher_top_ngram():
    check = repetition(max_top_ngram_fraction=((2, 0.20),))
    assert check("ab cd x ab cd " + "y" * 26) is None                   # 2 * 4 / 40 = 0.20
    assert check("ab cd x ab cd " + "y" * 25) == "top_2_gram"           # 8 / 39


def test_gopher_duplicated_ngrams():
    check = repetition(max_dup_ngram_fraction=((5, 0.15),))
    assert check("a b c d e a b c d e " + "y" * 14) is None             # 5 / 34 < 0.15
    assert check("a b c d e a b c d e " + "y" * 13) == "duplicated_5_n_grams"  # 5 / 33 > 0.15


SENTENCE = "This line is a sentence."


def test_c4_rules():
    check = C4QualityFilter()
    assert check("\n".join([SENTENCE] * 5)) is None
    assert check("\n".join([SENTENCE] * 4)) == "c4_too_few_sentences"
    assert check("\n".join([SENTENCE] * 4 + ["Two words."])) == "c4_too_few_sentences"
    assert check("\n".join([SENTENCE] * 4 + ["Enable javascript to see."])) == "c4_too_few_sentences"
    assert check("\n".join([SENTENCE] * 5 + ["Lorem Ipsum dolor."])) == "c4_lorem_ipsum"
    assert check("\n".join([SENTENCE] * 5 + ["x = {}"])) == "c4_curly_bracket"
    assert C4QualityFilter(filter_curly_braces=False)("\n".join([SENTENCE] * 5 + ["x = {}"])) is None
    strict = C4QualityFilter(filter_no_terminal_punct=True)
    assert strict("\n".join([SENTENCE] * 4 + ["This one has none"])) == "c4_too_few_sentences"


NO_FINEWEB = dict(min_terminal_punct_line_fraction=0.0, max_short_line_fraction=1.0, max_dup_line_char_fraction=1.0,
                  max_newline_word_ratio=10.0)


def fineweb(**rule) -> FineWebQualityFilter:
    return FineWebQualityFilter(**{**NO_FINEWEB, **rule})


def test_fineweb_rules():
    check = fineweb(min_terminal_punct_line_fraction=0.12)
    lines = [f"line {i}" for i in range(25)]
    assert check("\n".join(s + "." if i < 3 else s for i, s in enumerate(lines))) is None       # 3 / 25
    assert check("\n".join(s + "." if i < 2 else s for i, s in enumerate(lines))) == "fineweb_line_punct_ratio"
    check = fineweb(max_short_line_fraction=0.67)
    assert check("\n".join(["s" * 30] * 67 + ["l" * 31] * 33)) is None
    assert check("\n".join(["s" * 30] * 68 + ["l" * 31] * 32)) == "fineweb_short_line_ratio"
    check = fineweb(max_dup_line_char_fraction=0.01)
    assert check("\n".join(["a" * 98, "y", "y"])) is None                                      # 1 / 100
    assert check("\n".join(["a" * 97, "y", "y"])) == "fineweb_char_dup_ratio"                  # 1 / 99
    check = fineweb(max_newline_word_ratio=0.3)
    assert check("w w w\nw w w\nw w w\nw") is None                                             # 3 / 10
    assert check("w w\nw w\nw w w\nw w\nw") == "fineweb_list_ratio"                            # 4 / 10


def code(**rule) -> CodeQualityFilter:
    off = dict(max_line_length=10**9, max_mean_line_length=10**9, min_alphanumeric_fraction=0.0,
               autogenerated_header_lines=0, max_encoded_run_length=10**9, max_encoded_fraction=1.0,
               max_literal_line_fraction=1.0, max_escape_fraction=1.0, max_digit_fraction=1.0)
    return CodeQualityFilter(**{**off, **rule})


def test_code_rules():
    assert code(max_line_length=1000)("a" * 1000) is None
    assert code(max_line_length=1000)("a" * 1001 + "\nb") == "code_max_line_length"
    assert code(max_mean_line_length=100)("a" * 150 + "\n" + "b" * 50) is None
    assert code(max_mean_line_length=100)("a" * 151 + "\n" + "b" * 50) == "code_mean_line_length"
    assert code(min_alphanumeric_fraction=0.25)("a---" * 10) is None
    assert code(min_alphanumeric_fraction=0.25)("a----" * 10) == "code_alphanumeric_fraction"
    header = "\n".join(["x = 1"] * 4 + ["# Auto-generated by a tool"])
    assert code(autogenerated_header_lines=5)(header) == "code_autogenerated"
    assert code(autogenerated_header_lines=5)("x = 1\n" + header) is None
    blob = "s = '{}'\n" + "y = x + 1  # plain code\n" * 100
    assert code(max_encoded_run_length=1024)(blob.format("QUJD" * 256)) is None                # 1024 characters
    assert code(max_encoded_run_length=1024)(blob.format("QUJD" * 256 + "Q")) == "code_encoded_data"
    assert code(max_encoded_fraction=0.5)("A" * 100 + " " * 100) is None
    assert code(max_encoded_fraction=0.5)("A" * 100 + " " * 99) == "code_encoded_data"


def test_data_posing_as_code_rules():
    check = code(max_literal_line_fraction=0.5)  # of the lines holding code: blank and comment-only lines aside
    table = ["x = {", "    'AElig': 'Æ',", "    0x00a0: 0x00ff,  # NO-BREAK SPACE", "}"]
    assert check("\n".join(table + ["", "# a comment"])) is None                              # 2 / 4
    assert check("\n".join(table[:-1] + ["    '\\x00'     #  0x00 -> NULL", "}"])) == "code_literal_lines"  # 3 / 5
    assert check("\n".join(["    (1, 2.5, -3e4),", "    b'abc' 'def',", "y = f(1)"])) == "code_literal_lines"
    assert check("\n".join(["return 0", ")", "x = '1'", "'1'"])) is None                      # 1 / 4
    check = code(max_escape_fraction=0.04)  # \\xNN, \\uNNNN, \\UNNNNNNNN, octal \\NNN
    assert check("\\x00" + "a" * 96) is None                                                 # 4 / 100
    assert check("\\x00" + "a" * 95) == "code_escape_fraction"                               # 4 / 99
    assert check("\\u00e9\\U0001F600\\101" + "a" * 496) is None                             # 20 / 516
    assert check("\\u00e9\\U0001F600\\101" + "a" * 400) == "code_escape_fraction"           # 20 / 420
    assert check("\\n\\t\\\\" * 10 + "a" * 10) is None                                          # not character escapes
    check = code(max_digit_fraction=0.2)
    assert check("1" * 20 + "a" * 80) is None
    assert check("1" * 21 + "a" * 79) == "code_digit_fraction"


def test_default_code_filter_drops_tables_and_keeps_modules_with_lists():
    codec = ("decoding_table = (\n" + "".join(f"    '\\x{i:02x}'     #  0x{i:02X} -> CONTROL\n" for i in range(40))
             + ")\n\ndef decode(data):\n    return codecs.charmap_decode(data, 'strict', decoding_table)\n")
    assert CodeQualityFilter()(codec) == "code_literal_lines"
    module = ('__all__ = [\n    "parse",\n    "dump",\n]\n\n\ndef parse(text):\n    """Parse text."""\n'
              '    return [line.split(",") for line in text.splitlines()]\n\n\ndef dump(rows):\n'
              '    return "\\n".join(",".join(row) for row in rows)\n')
    assert CodeQualityFilter()(module) is None


def test_thresholds_are_replaced_by_name_in_every_filter_that_has_them():
    (changed,) = with_thresholds(CODE_FILTERS, [("max_digit_fraction", 1), ("max_line_length", 20)])
    assert changed.max_digit_fraction == 1.0 and changed.max_line_length == 20
    assert isinstance(changed.max_line_length, int)
    assert changed.max_escape_fraction == CODE_FILTERS[0].max_escape_fraction
    assert changed("x=" + "1" * 15) is None and CODE_FILTERS[0]("x=" + "1" * 15) == "code_digit_fraction"
    both = with_thresholds((GopherRepetitionFilter(), FineWebQualityFilter()), [("max_dup_line_char_fraction", 0.5)])
    assert [f.max_dup_line_char_fraction for f in both] == [0.5, 0.5]
    with pytest.raises(ValueError, match="no filter has a threshold called 'max_digits'; known: .*max_digit_fraction"):
        with_thresholds(CODE_FILTERS, [("max_digits", 0.3)])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        with_thresholds(CODE_FILTERS, [("max_digit_fraction", 1.5)])
    with pytest.raises(ValueError, match="max_line_length is a count and must be a whole number, not 2.5"):
        with_thresholds(CODE_FILTERS, [("max_line_length", 2.5)])


def test_default_code_filter_keeps_ordinary_python():
    source = 'def add(a: int, b: int) -> int:\n    """Sum of two numbers."""\n    return a + b\n'
    assert CodeQualityFilter()(source) is None


@pytest.mark.parametrize(("factory", "kwargs"), [
    (GopherQualityFilter, {"min_alpha_words_fraction": 1.5}),
    (FineWebQualityFilter, {"max_short_line_fraction": -0.1}),
    (CodeQualityFilter, {"max_line_length": -1}),
    (GopherRepetitionFilter, {"max_top_ngram_fraction": ((2, 1.5),)}),
    (CleaningConfig, {"threshold": 1.0}),
    (CleaningConfig, {"workers": 0}),
])
def test_invalid_thresholds_raise_one_line_value_error(factory, kwargs):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    assert "\n" not in str(info.value)


def corpus() -> list[Document]:
    body = "\n".join(f"def function_{i}(x):\n    return x * {i} + {i * i}\n" for i in range(40))
    return [Document("a.py", body), Document("empty.py", "\n\n"), Document("blob.py", "x = 1\n" + "#" * 2000),
            Document("gen.py", "# Automatically generated\n" + body), Document("copy.py", body.replace("\n", "\r\n")),
            Document("b.py", body.replace("function_3(", "renamed(")), Document("c.py", "print('hello world')\n")]


def test_pipeline_report_and_kept_documents():
    kept, report = clean_and_dedup(corpus(), CleaningConfig(num_perm=64))
    assert [doc.path for doc in kept] == ["a.py", "c.py"]
    assert report.documents == 7 and report.kept[0] == 2
    assert {reason: counts[0] for reason, counts in report.dropped.items()} == {
        "empty": 1, "code_max_line_length": 1, "code_autogenerated": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert report.examples["exact_duplicate"] == ["copy.py = a.py"]
    assert report.clusters == [["a.py", "b.py"]]
    assert "near-duplicate clusters: 1" in report.summary()


def test_pipeline_is_deterministic_across_worker_counts():
    docs = corpus() * 3
    one = scan(docs, CleaningConfig(num_perm=64, workers=1)).to_dict()
    two = scan(docs, CleaningConfig(num_perm=64, workers=2, batch_size=2)).to_dict()
    assert one == two


def test_pipeline_reads_the_stream_lazily():
    consumed = 0
    lag = []

    def documents():
        nonlocal consumed
        for i in range(200):
            consumed += 1
            yield Document(f"{i}.py", f"value_{i} = {i}\n")

    def watcher(text: str) -> None:
        lag.append(consumed - len(lag))

    scan(documents(), CleaningConfig(filters=(watcher,), batch_size=8, num_perm=16, verify=False))
    assert len(lag) == 200 and max(lag) <= 8


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        scan(iter([]))
    with pytest.raises(ValueError, match="not an iterator"):
        clean_and_dedup(iter(corpus()))
