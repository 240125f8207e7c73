"""tokend/cli/toml_subset.py: the strict TOML subset the fast path reads, held to tomllib.

Documents are generated from the subset's own grammar (every construct its docstring
lists, in random combinations): each must be read, and read exactly as tomllib reads it.
The same documents with one construct beyond the subset must make it give up, though
tomllib reads them. (The hand-written cases and the mutation fuzz are in
tests/test_fastpath.py, with the rest of the fast path.)
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable

import pytest

from tokend.cli.toml_subset import CONTROL_CHARACTERS, GiveUp, parse_toml, scalar

SEEDS = [1, 2, 3, 4]


def typed(value: object) -> object:
    """A value with its types spelled out: 1, 1.0 and True differ, and so do 0.0 and -0.0."""
    if isinstance(value, dict):
        return ("table", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("array", [typed(v) for v in value])
    return (type(value).__name__, repr(value))


# --------------------------------------------------------------------------- a generator of the subset


class Subset:
    """Random documents in the subset: bare keys (each used once, so nothing is defined
    twice), tables only ever defined before their subtables, ``[[arrays]]`` of tables with
    no table below them, and values of every kind the subset reads."""

    STRING = "abcXYZ019 _-.,:;=#[]{}/+*~!?@$%^&()|<>üé✓☃\u00a0\t"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def key(self) -> str:
        self.n += 1
        stem = "".join(self.rng.choice("abzAZ09_-") for _ in range(self.rng.randint(0, 4)))
        return f"{stem}k{self.n}"

    def blank(self) -> str:
        return self.rng.choice(["", "", " ", "\t", "  "])

    def comment(self) -> str:
        return self.rng.choice(["", "", "", " # a comment", "\t#", " # ☃ = [x]"])

    def integer(self) -> str:
        digits = self.rng.choice(["0", str(self.rng.randint(1, 9)), str(self.rng.randint(1, 10**30))])
        return self.rng.choice(["", "", "-"]) + digits

    def value(self, *, inline: bool = False) -> str:
        kind = self.rng.randint(0, 9 if not inline else 7)
        if kind == 0:
            return self.integer()
        if kind == 1:
            return f"{self.integer()}.{self.rng.randint(0, 10**6):0{self.rng.randint(1, 7)}d}"
        if kind == 2:
            return self.rng.choice(["true", "false"])
        if kind in (3, 4):
            text = "".join(self.rng.choice(self.STRING + "'") for _ in range(self.rng.randint(0, 8)))
            return f'"{text}"'
        if kind == 5:
            text = "".join(self.rng.choice(self.STRING + '"\\') for _ in range(self.rng.randint(0, 8)))
            return f"'{text}'"
        if kind in (6, 7):
            return self.array()
        return self.inline_table()  # not in an array, nor in another inline table

    def array(self) -> str:
        items = [self.value(inline=True) for _ in range(self.rng.randint(0, 4))]
        items = [item for item in items if not item.startswith(("[", "{"))]  # no nesting
        gaps = [" ", "", "\n  ", " # c\n", "\n\n", "\t"]
        text = "[" + self.rng.choice(gaps)
        for i, item in enumerate(items):
            text += item + self.rng.choice(["", " ", "\n"])
            if i < len(items) - 1 or self.rng.random() < 0.3:  # a trailing comma is allowed
                text += "," + self.rng.choice(gaps)
        return text + "]"

    def inline_table(self) -> str:
        pairs = []
        for _ in range(self.rng.randint(0, 3)):
            value = self.value(inline=True)
            if self.rng.random() < 0.2:
                value = self.array()  # lines only inside an array: the table is one line
            pairs.append(f"{self.key()}{self.blank()}={self.blank()}{value}")
        return "{" + self.blank() + f"{self.blank()},{self.blank()}".join(pairs) + self.blank() + "}"

    def pairs(self) -> list[str]:
        lines = []
        for _ in range(self.rng.randint(0, 4)):
            line = f"{self.blank()}{self.key()}{self.blank()}={self.blank()}{self.value()}"
            lines.append(line + self.blank() + self.comment())
            if self.rng.random() < 0.2:
                lines.append(self.rng.choice(["", "# a line of comment", "   "]))
        return lines

    def document(self) -> list[list[str]]:
        """Sections: the root's lines, then each header with its lines."""
        sections = [self.pairs()]
        tables: list[list[str]] = [[]]  # paths a header may go below: the root and [tables]
        for _ in range(self.rng.randint(0, 5)):
            below = self.rng.choice(tables)
            path = below + [self.key() for _ in range(self.rng.randint(1, 2))]
            name = ".".join(path)
            if self.rng.random() < 0.3:
                for _ in range(self.rng.randint(1, 3)):
                    sections.append([f"[[{name}]]{self.blank()}{self.comment()}", *self.pairs()])
            else:
                sections.append([f"[{name}]{self.blank()}{self.comment()}", *self.pairs()])
                tables.append(path)
        return sections

    def render(self, sections: list[list[str]]) -> str:
        text = "\n".join(line for section in sections for line in section)
        text += self.rng.choice(["\n", "", "\n\n"])
        return text.replace("\n", "\r\n") if self.rng.random() < 0.2 else text


def read(text: str) -> object:
    try:
        return typed(parse_toml(text))
    except GiveUp:
        return None


# --------------------------------------------------------------------------- what it reads


@pytest.mark.parametrize("seed", SEEDS)
def test_every_document_in_the_subset_is_read_as_tomllib_reads_it(seed: int) -> None:
    gen = Subset(random.Random(seed))
    kinds: set[str] = set()
    for _ in range(300):
        text = gen.render(gen.document())
        expected = typed(tomllib.loads(text))  # the generator writes valid TOML
        assert read(text) == expected, repr(text)
        kinds.update(type(v).__name__ for v in _leaves(parse_toml(text)))
    assert kinds == {"bool", "int", "float", "str", "list", "dict"}  # the check is not empty


def _leaves(table: dict[str, object]) -> list[object]:
    out: list[object] = []
    for value in table.values():
        out.append(value)
        if isinstance(value, dict):
            out += _leaves(value)
        elif isinstance(value, list):
            for item in value:
                out += _leaves(item) if isinstance(item, dict) else [item]
    return out


def test_crlf_line_endings_read_as_lf() -> None:
    text = "a = 1 # c\n[t]\nx = [1,\n 2]\n[[t.r]]\ny = 'v'\n"
    assert parse_toml(text.replace("\n", "\r\n")) == parse_toml(text) == tomllib.loads(text)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("true", True),
        ("false", False),
        ("0", 0),
        ("-0", 0),
        ("-12", -12),
        ("0.5", 0.5),
        ("-0.0", -0.0),
        ("10.000", 10.0),
        ("123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_a_scalar_is_what_tomllib_makes_of_it(token: str, expected: object) -> None:
    assert typed(scalar(token)) == typed(expected) == typed(tomllib.loads(f"a = {token}")["a"])


# --------------------------------------------------------------------------- where it gives up

# Valid TOML beyond the subset, as a value, a line or a header (``{k}``: a fresh key).
BEYOND_VALUES = [
    '"a\\tb"',
    '"\\u00e9"',
    '"""x"""',
    "'''x'''",
    "1e3",
    "1.5E-2",
    "1_000",
    "0x1f",
    "0o17",
    "0b101",
    "+1",
    "+1.5",
    "inf",
    "-nan",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00Z",
    "[[1], [2]]",
    "[{x = 1}]",
    "{x = {y = 1}}",
    "{x.y = 1}",
    "{x = [[1]]}",
]
BEYOND_LINES = ["{k}.x = 1", '"{k}" = 1', "'{k}' = 1", '{k} = """\nline\n"""']
BEYOND_HEADERS = ["[ {k} ]", '["{k}"]', "[{k} . x]", "[[ {k} ]]", "['{k}']"]


def beyond(gen: Subset) -> Callable[[list[list[str]]], None]:
    """One way of putting one construct beyond the subset into a document."""
    rng = gen.rng
    where = rng.random()
    if where < 0.6:
        snippet = rng.choice(BEYOND_VALUES)
        return lambda sections: rng.choice(sections).append(f"{gen.key()} = {snippet}")
    if where < 0.8:
        line = rng.choice(BEYOND_LINES).format(k=gen.key())
        return lambda sections: rng.choice(sections).append(line)
    header = rng.choice(BEYOND_HEADERS).format(k=gen.key())
    return lambda sections: sections.append([header, "x = 1"])


def tomllib_reads(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


@pytest.mark.parametrize("seed", SEEDS)
def test_one_construct_beyond_the_subset_anywhere_makes_it_give_up(seed: int) -> None:
    gen = Subset(random.Random(seed))
    for _ in range(300):
        sections = gen.document()
        beyond(gen)(sections)
        text = gen.render(sections)
        assert tomllib_reads(text), repr(text)  # valid TOML: only beyond the subset
        with pytest.raises(GiveUp):
            parse_toml(text)


@pytest.mark.parametrize("char", CONTROL_CHARACTERS)
def test_a_control_character_anywhere_makes_it_give_up(char: str) -> None:
    """Even in a comment or a literal string, where TOML would take a few of them."""
    for text in (f"# {char} x\na = 1\n", f"a = '{char}x'\n", f"a = 1{char} \n"):
        with pytest.raises(GiveUp, match="control character"):
            parse_toml(text)


def test_a_lone_carriage_return_makes_it_give_up() -> None:
    with pytest.raises(GiveUp, match="control character"):
        parse_toml("a = 1\rb = 2\r\n")


@pytest.mark.parametrize(
    "token", ["²", "١٢", "1.²", "00", "-01", "--1", "1.", ".1", "-", "", "1.2.3", "tru\u0435"]
)
def test_a_scalar_it_does_not_know_makes_it_give_up(token: str) -> None:
    """Unicode digits, which ``str.isdigit`` would take, and a "true" spelt with a Cyrillic e."""
    with pytest.raises(GiveUp):
        scalar(token)
