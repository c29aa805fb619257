"""File names and other text from outside covidx (folder and class names), made safe to show in
the text, CSV and HTML that covidx writes.

A file name is any bytes but '/' and NUL: bytes that are not UTF-8 (which Python keeps as lone
surrogates, and a UTF-8 stream cannot write), a newline (which would start a forged row of a
table), terminal escape sequences. printable() shows each such character as a Python escape
(\\xff, \\n, \\x1b), so the text can always be written and one name stays one line. JSON output
keeps the exact name instead (JSON escapes any character)."""
from __future__ import annotations

import unicodedata

# what a spreadsheet takes for the start of a formula (=, +, -, @; tab and carriage return too,
# since some strip them first)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text):
    """str(text) with bytes that are not UTF-8 shown as \\xNN and control characters (newlines,
    tabs, escapes, and Unicode's other non-printing characters) as \\n, \\t, \\x1b, \\u202e."""
    text = str(text)
    if text.isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c):
    if c in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
    code = ord(c)
    if unicodedata.category(c) == "Zs":  # spaces other than ' ' are printable enough
        return c
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code


def spreadsheet_cell(text):
    """printable(text), with a leading apostrophe where a spreadsheet would run it as a formula
    (OWASP's advice for CSV injection): '=HYPERLINK(...)' stays text."""
    text = printable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
