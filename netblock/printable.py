"""Text from logs and from the store, made safe to print on a terminal or to put in a page.

A reason, a class, a HELO name, an AS name or a source path may hold bytes a
client or a fleet peer chose: an ESC sequence that rewrites the screen or the
window title, a CR that hides what came before it, a NUL, a U+202E (right-to-
left override) that makes ``198.18.0.1`` read as something else. Every
human-readable output passes such text through :func:`printable`, the one
place that decides what is shown raw; JSON output stays exact (JSON escapes
itself).

Escaped: every control character (C0, DEL, C1), format characters (the bidi
overrides and isolates, zero-width joiners, the BOM, tag characters), line
and paragraph separators, surrogates and private-use characters. They are
written the way Python writes them in a string literal (``\\x1b``,
``\\u202e``), so what was there can still be read.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with every character that could act on a terminal written as an escape.

    ``keep_newlines`` lets "\\n" through, for text already laid out in lines
    whose fields were escaped on their own.

    >>> printable("zen.example\\x1b]0;owned\\x07 ok")
    'zen.example\\\\x1b]0;owned\\\\x07 ok'
    >>> printable("198.18.0.1\\u202e1.0.81.891")
    '198.18.0.1\\\\u202e1.0.81.891'
    >>> printable("a\\r\\nb\\x00", keep_newlines=True)
    'a\\\\r\\nb\\\\x00'
    >>> printable("Müller GmbH, 東京")
    'Müller GmbH, 東京'
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in _ESCAPED:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
