"""The TOML tokend configs are written in, read with nothing but the standard library's
cheapest parts: ``tomllib``'s import alone costs about as much as starting Python, which
``tokend token``'s fast path cannot afford. A strict subset: anything else gives up, and
the caller takes the validated path (which uses tomllib). Fuzzed against tomllib in
tests/test_fastpath.py.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs as much as the rest of this module
if TYPE_CHECKING:
    from typing import Any


class GiveUp(Exception):
    """Something the fast path does not understand: the validated path decides."""


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
CONTROL_CHARACTERS = _CONTROL = tuple(chr(c) for c in (*range(0, 9), *range(11, 32), 127))
_SCALAR_END = " \t\n,]}#"


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)`` for the TOML tokend configs are written in, else GiveUp.

    Understood: comments, ``[a.b]`` and ``[[a.b]]`` headers of bare keys, ``key = value``
    with a bare key, single-line basic strings without escapes, literal strings, decimal
    integers and floats without exponent or underscores, booleans, arrays of those (over
    several lines too), and one-line inline tables of those. Anything else (escapes,
    multi-line strings, dates, dotted or quoted keys, a table defined twice or after its
    subtables, whitespace inside headers) gives up, including what TOML itself refuses.
    """
    text = text.replace("\r\n", "\n")
    if "\r" in text or any(c in text for c in _CONTROL):
        raise GiveUp("control character")
    return _Toml(text).document()


class _Toml:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.root: dict[str, Any] = {}
        self.open: set[int] = {id(self.root)}  # tables made by headers: others are frozen
        self.arrays: set[int] = set()  # arrays of tables made by [[headers]]

    def document(self) -> dict[str, Any]:
        s, n = self.s, len(self.s)
        table = self.root
        while True:
            self.blank()
            if self.i >= n:
                return self.root
            c = s[self.i]
            if c == "\n":
                self.i += 1
                continue
            if c == "#":
                self.comment()
                continue
            if c == "[":
                table = self.array_table() if s.startswith("[[", self.i) else self.table()
            else:
                key = self.key()
                self.blank()
                self.expect("=")
                self.blank()
                value = self.value()
                if key in table:
                    raise GiveUp("key defined twice")
                table[key] = value
            self.end_of_line()

    # ---- lexing

    def blank(self) -> None:
        s, n, i = self.s, len(self.s), self.i
        while i < n and s[i] in " \t":
            i += 1
        self.i = i

    def comment(self) -> None:
        end = self.s.find("\n", self.i)
        self.i = len(self.s) if end < 0 else end

    def expect(self, char: str) -> None:
        if not self.s.startswith(char, self.i):
            raise GiveUp(f"expected {char!r}")
        self.i += len(char)

    def end_of_line(self) -> None:
        self.blank()
        if self.s.startswith("#", self.i):
            self.comment()
        if self.i < len(self.s):
            self.expect("\n")

    def key(self) -> str:
        s, n, start = self.s, len(self.s), self.i
        i = start
        while i < n and s[i] in _BARE_KEY:
            i += 1
        if i == start:
            raise GiveUp("not a bare key")
        self.i = i
        return s[start:i]

    def header(self, brackets: str) -> list[str]:
        self.expect(brackets)
        path = [self.key()]
        while self.s.startswith(".", self.i):
            self.i += 1
            path.append(self.key())
        self.expect(brackets.replace("[", "]"))
        return path

    # ---- values

    def value(self) -> Any:
        s, i = self.s, self.i
        c = s[i : i + 1]
        if c in ('"', "'"):
            if s.startswith(c * 3, i):
                raise GiveUp("multi-line string")
            end = s.find(c, i + 1)
            if end < 0:
                raise GiveUp("unterminated string")
            text = s[i + 1 : end]
            if "\n" in text or (c == '"' and "\\" in text):
                raise GiveUp("string with an escape or a newline")
            self.i = end + 1
            return text
        if c == "[":
            return self.array()
        if c == "{":
            return self.inline_table()
        end = i
        while end < len(s) and s[end] not in _SCALAR_END:
            end += 1
        self.i = end
        return scalar(s[i:end])

    def skip_space(self) -> None:
        """Whitespace, newlines and comments, as arrays allow between their values."""
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in " \t\n":
                self.i += 1
            elif c == "#":
                self.comment()
            else:
                return

    def array(self) -> list[Any]:
        self.expect("[")
        items: list[Any] = []
        while True:
            self.skip_space()
            if self.s.startswith("]", self.i):
                self.i += 1
                return items
            if self.s[self.i : self.i + 1] in ("[", "{"):
                raise GiveUp("nested array or table in an array")
            items.append(self.value())
            self.skip_space()
            if self.s.startswith(",", self.i):
                self.i += 1
            elif not self.s.startswith("]", self.i):
                raise GiveUp("expected ',' or ']'")

    def inline_table(self) -> dict[str, Any]:
        self.expect("{")
        table: dict[str, Any] = {}
        self.blank()
        if self.s.startswith("}", self.i):
            self.i += 1
            return table
        while True:
            key = self.key()
            self.blank()
            self.expect("=")
            self.blank()
            if self.s.startswith("{", self.i):
                raise GiveUp("nested inline table")
            value = self.value()
            if key in table:
                raise GiveUp("key defined twice")
            table[key] = value
            self.blank()
            if self.s.startswith("}", self.i):
                self.i += 1
                return table
            self.expect(",")
            self.blank()

    # ---- tables

    def parent(self, path: list[str]) -> dict[str, Any]:
        """The table holding ``path``'s last key, making missing ones on the way; only
        through tables that headers made (not inline tables, not arrays of tables)."""
        node = self.root
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                self.open.add(id(child))
            elif not isinstance(child, dict) or id(child) not in self.open:
                raise GiveUp("header through a value")
            node = child
        return node

    def table(self) -> dict[str, Any]:
        path = self.header("[")
        parent = self.parent(path)
        if path[-1] in parent:
            raise GiveUp("table defined twice, or after its subtables")
        table: dict[str, Any] = {}
        parent[path[-1]] = table
        self.open.add(id(table))
        return table

    def array_table(self) -> dict[str, Any]:
        path = self.header("[[")
        parent = self.parent(path)
        array = parent.get(path[-1])
        if array is None:
            array = parent[path[-1]] = []
            self.arrays.add(id(array))
        elif not isinstance(array, list) or id(array) not in self.arrays:
            raise GiveUp("[[array]] of something else")
        table: dict[str, Any] = {}
        array.append(table)
        self.open.add(id(table))
        return table


def scalar(token: str) -> bool | int | float:
    """``true``, ``false``, ``-12``, ``0.5``: TOML's plainest spellings, as tomllib reads them."""
    if token in ("true", "false"):
        return token == "true"
    number = token.removeprefix("-")
    whole, dot, fraction = number.partition(".")
    for digits in (whole, fraction) if dot else (whole,):
        if not (digits.isascii() and digits.isdigit()):
            raise GiveUp("not a plain number")
    if len(whole) > 1 and whole.startswith("0"):
        raise GiveUp("leading zero")
    return float(token) if dot else int(token)
