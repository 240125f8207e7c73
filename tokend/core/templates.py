"""Template sinks: a file in the consumer's own shape (``.netrc``, Docker ``config.json``, an
nginx include) with the token's fields put in.

``string.Template`` semantics and nothing more: ``${name}`` or ``$name`` for one of
:data:`PLACEHOLDERS`, ``$$`` for a literal ``$``. No expression, attribute, index or format
spec is ever evaluated, so a template cannot run code, and it can only reach what the
placeholders offer: the refresh token and the client secret are not among them, and never
reach this module. Every template is checked once, when the config is loaded
(:func:`check`), so that a typo is a config error naming the placeholder and its line, not
a sink that fails at three in the morning.

Pure: the template's text comes in (the config read it), the rendered text goes out.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping

from tokend.core.timestamps import rfc3339
from tokend.core.tokens import Token

MAX_TEMPLATE_BYTES = 64 * 1024  # a consumer's config file; more is the wrong file
MAX_RENDERED_CHARS = 1024 * 1024  # 64 KiB of "${access_token}" must not become gigabytes

PLACEHOLDERS: Mapping[str, str] = {
    "access_token": "the access token, verbatim",
    "access_token_json": "the access token as a JSON string literal, quotes included",
    "token_type": 'the token type; "Bearer" however the server spelled it (bearer, BEARER)',
    "expires_at": "when the token expires, RFC 3339 UTC",
    "expires_at_unix": "when the token expires, in unix seconds (an integer)",
    "obtained_at": "when the token was asked for, RFC 3339 UTC",
    "scope": "the granted scope, space-separated (empty if the server said none)",
    "credential": "the credential's name",
}

# An error quotes at most this much of the template: a template_file pointed at the wrong
# file by mistake (a key, a password hash) must not have its content copied into the logs.
_SHOWN_NAME = 24  # longer than any placeholder, and than any typo of one
# string.Template's names are ASCII: "$accéss" would be "$acc" and a literal "éss", and
# "${accéss}" a "${" starting nothing. Both are reported as the word the author wrote.
_WORD_TAIL = re.compile(r"\w*")
_BRACED_WORD = re.compile(r"\{(\w+)\}")


class TemplateError(ValueError):
    """A template that cannot be rendered: the message names the line and the placeholder."""

    def __init__(self, line: int, message: str, column: int | None = None) -> None:
        where = f"line {line}" if column is None else f"line {line}, column {column}"
        super().__init__(f"{where}: {message}")
        self.line = line


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _column_of(text: str, index: int) -> int:
    return index - (text.rfind("\n", 0, index) + 1) + 1


def check(text: str) -> frozenset[str]:
    """The placeholders ``text`` uses; raises :class:`TemplateError` for an unknown one, a
    ``$`` that starts none (write ``$$``), or a template that is too large."""
    return frozenset(_uses(text))


def _uses(text: str) -> dict[str, int]:
    """How often each placeholder is used (see :func:`check`)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
        raise TemplateError(1, f"the template is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    used: dict[str, int] = {}
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if match.group("named") is not None:
            tail = _WORD_TAIL.match(text, match.end("named"))
            name += tail.group() if tail else ""  # "$accéss": the whole word
        if name is not None:
            if name not in PLACEHOLDERS:
                _unknown(text, match.start(), name)
            used[name] = used.get(name, 0) + 1
        elif match.group("invalid") is not None:
            dollar = match.start("invalid") - 1
            braced = _BRACED_WORD.match(text, dollar + 1)
            if braced is not None:  # "${accéss}": a name string.Template cannot take
                _unknown(text, dollar, braced.group(1))
            after = text[dollar : dollar + 2].rstrip("\n")  # "$" and one more character at most
            raise TemplateError(
                _line_of(text, dollar),
                f"{after!r} starts no placeholder: write ${{name}} with a known name, or $$ for a literal $",
                _column_of(text, dollar),
            )
    return used


def _unknown(text: str, index: int, name: str) -> None:
    known = ", ".join(f"${{{p}}}" for p in PLACEHOLDERS)
    shown = f"${{{name}}}" if len(name) <= _SHOWN_NAME else f"(a name of {len(name)} characters)"
    raise TemplateError(
        _line_of(text, index), f"unknown placeholder {shown}; known: {known}; $$ for a literal $"
    )


def values(token: Token, credential: str) -> dict[str, str]:
    """What each placeholder stands for. The token's refresh token is not among them."""
    return {
        "access_token": token.access_token,
        "access_token_json": json.dumps(token.access_token),
        "token_type": token.token_type,
        "expires_at": rfc3339(token.expires_at),
        "expires_at_unix": str(int(token.expires_at)),
        "obtained_at": rfc3339(token.obtained_at),
        "scope": token.scope or "",
        "credential": credential,
    }


def render(text: str, token: Token, credential: str) -> str:
    """The template with the token's fields put in. Raises ValueError (a
    :class:`TemplateError` for a template :func:`check` refuses; the config never holds
    one), or if the server's scope, which the template uses, would break the file's lines."""
    used = _uses(text)
    fields = values(token, credential)
    if "scope" in used and not fields["scope"].isprintable():
        raise ValueError("the scope the server granted holds control characters; not put in a template")
    size = len(text) + sum(count * len(fields[name]) for name, count in used.items())
    if size > MAX_RENDERED_CHARS:  # judged before rendering: never build the huge string
        raise ValueError(f"the rendered template would be larger than {MAX_RENDERED_CHARS // 1024} KiB")
    return string.Template(text).substitute(fields)
