"""How input-derived strings are shown: one escaping for every text renderer, one for JSON.

Names in a payload (symbols, sections, ``.livepatch.funcs`` strings) and
file paths are bytes that other people's builds chose. They are decoded
with ``surrogateescape`` so that they round-trip, which means a string may
hold any control character and, for each byte that is not UTF-8, a lone
surrogate U+DC80..U+DCFF.

:func:`shown` is what every text renderer (tables, reports, summaries,
error lines) applies to such a string: a backslash becomes ``\\\\``; a byte
that is not UTF-8 becomes ``\\xNN``; a C0 or C1 control, DEL, or any other
character Python does not call printable (line and paragraph separators,
bidi overrides, non-ASCII spaces) becomes ``\\xNN``, ``\\uNNNN`` or
``\\UNNNNNNNN``. The result has no control character, so a name can neither
drive the terminal (ESC, CSI, OSC, BEL) nor start a line of its own (LF,
CR), and it is unambiguous: the original bytes can be read back from it.

:func:`for_json` is what JSON and SARIF get: strings stay exact (JSON
escapes control characters itself), except that every backslash is doubled
and a byte that is not UTF-8 becomes ``\\xNN`` — the same rule as the text
form for those two, so the output is valid UTF-8 with no lone surrogate
(which strict consumers refuse) and still lossless.
"""

from __future__ import annotations

from typing import Any


def _escape_char(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape decoded it
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def shown(text: str) -> str:
    """``text`` safe to print on a terminal or in a log, on one line (see the module's rule)."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    return "".join("\\\\" if c == "\\" else c if c.isprintable() else _escape_char(c) for c in text)


def _json_str(text: str) -> str:
    if "\\" not in text and text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text.replace("\\", "\\\\")
    return "".join("\\\\" if c == "\\" else _escape_char(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def for_json(obj: Any) -> Any:
    """``obj`` with every string (keys too) in the JSON form of the module's rule."""
    if isinstance(obj, str):
        return _json_str(obj)
    if isinstance(obj, dict):
        return {for_json(k): for_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [for_json(v) for v in obj]
    return obj
