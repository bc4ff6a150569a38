"""Text normalisation: one canonical spelling of a document before anything else sees it.

Filters, hashes and shingles must not tell apart texts that differ only in how they
are encoded, so every document first goes through ``normalize_text``:

- Unicode NFC, so that "é" as one code point and as "e" + combining accent are equal;
- newlines: ``\\r\\n`` and lone ``\\r`` become ``\\n`` (Windows and old Mac files);
- control characters (Unicode category Cc) are removed, except tab and newline.

``simplify_text`` is the coarser key used only for *exact* deduplication of prose,
after datatrove's ``simplify_text`` (the FineWeb pipeline): lowercase, digits mapped
to ``0``, punctuation removed, whitespace collapsed.  Code keeps its digits and
punctuation (they are content there), so ``collapse_whitespace`` is its key.
"""

from __future__ import annotations

import re
import unicodedata

_NEWLINES = re.compile(r"\r\n?")
_WHITESPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"\d")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
# Unicode category Cc is exactly U+0000..U+001F and U+007F..U+009F; tab and newline stay.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` newlines and no control characters other than tab and newline."""
    return _CONTROLS.sub("", unicodedata.normalize("NFC", _NEWLINES.sub("\n", text)))


def collapse_whitespace(text: str) -> str:
    """Lowercase, with every whitespace run replaced by one space: the exact-dedup key of code."""
    return _WHITESPACE.sub(" ", text.lower()).strip()


def simplify_text(text: str) -> str:
    """Lowercase, digits to ``0``, punctuation removed, whitespace collapsed: the key of prose."""
    return collapse_whitespace(_PUNCTUATION.sub(" ", _DIGITS.sub("0", text)))
