"""The rules an API token or an HMAC secret must pass before the runner starts, each with a name that the
refusal quotes (docs/runner.md lists them).

Chosen so that values made with `secrets.token_urlsafe(32)` or `secrets.token_hex(16)` (and longer) pass,
and values a person makes up or copies from an example do not: too short, few different characters, a
repeated pattern, mostly predictable parts. Those are found by zxcvbn's matchers: English words, names,
film and TV words, common passwords (also reversed and l33t-spelt), sequences and keyboard walks.
"""

from __future__ import annotations

import hashlib
import re

from zxcvbn import matching

# Trimmed from secrets read from files and stdin (a trailing newline); Unicode spaces are the secret's own.
ASCII_WHITESPACE = " \t\r\n"
MIN_LENGTH = 32
MIN_DISTINCT = 8
MAX_PREDICTABLE = 0.6
# Shortest part that counts: hex and base64 strings are full of short runs and digit-keypad walks.
MIN_PART = {"dictionary": 4, "sequence": 6, "spatial": 6}
MATCHERS = (
    matching.dictionary_match,
    matching.reverse_dictionary_match,
    matching.l33t_match,
    matching.sequence_match,
    lambda value: matching.spatial_match(value, {"qwerty": matching.GRAPHS["qwerty"]}),
)
# A bearer token as RFC 6750 defines it (b64token): printable ASCII without spaces, quotes or separators.
B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# A unit of 1 to 16 characters repeated 3 times or more in a row; 8 characters or more in all counts.
REPEAT = re.compile(r"(.{1,16}?)\1{2,}", re.DOTALL)
# A pre-hashed token cannot be checked, except against the hashes of values nobody may use.
WEAK_VALUES = (
    "",
    " ",
    "\t",
    "\n",
    "\u00a0",
    "\u2003",
    "\u3000",
    "changeme",
    "change-me",
    "secret",
    "password",
    "token",
    "admin",
    "test",
    "example",
    "fleetdeck",
    "replace-me",
    "please-change-this-secret-value-now",
    "0123456789abcdef0123456789abcdef",
    "00000000000000000000000000000000",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
)
WEAK_SHA256 = {hashlib.sha256(v.encode()).hexdigest(): v for v in WEAK_VALUES}


def problem(value: str, bearer: bool) -> str | None:
    """`rule-name: why` for the first rule `value` breaks, None when it passes them all.

    `bearer`: the value is an API token, sent in an Authorization header (HMAC secrets never are).
    """
    if not value.strip():
        return "empty: the value is empty or only whitespace"
    if bearer and not B64TOKEN.fullmatch(value):
        return (
            "not-b64token: a bearer token has only the characters A-Z a-z 0-9 - . _ ~ + / and trailing = "
            "(RFC 6750); no spaces, no other characters"
        )
    if len(value) < MIN_LENGTH:
        return f"too-short: {len(value)} characters, at least {MIN_LENGTH} are needed"
    if len(set(value)) < MIN_DISTINCT:
        return f"low-variety: {len(set(value))} different characters, at least {MIN_DISTINCT} are needed"
    for match in REPEAT.finditer(value):
        unit, run = match.group(1), match.group(0)
        if len(run) >= 8:
            return f"repeated-pattern: {unit!r} {len(run) // len(unit)} times in a row"
    parts = _predictable(value)
    if sum(len(p) for p in parts) >= MAX_PREDICTABLE * len(value):
        return (
            f"predictable: {', '.join(map(repr, parts))} (words, sequences, keyboard walks) make up "
            f"{MAX_PREDICTABLE:.0%} or more of it"
        )
    return None


def hash_problem(digest: str) -> str | None:
    if digest in WEAK_SHA256:
        return f"weak-hash: it is the sha256 of {WEAK_SHA256[digest]!r}"
    return None


def _predictable(value: str) -> list[str]:
    """The predictable parts of `value` (digits-only words do not count) that together cover most of it,
    in order."""
    found: dict[int, set[int]] = {}  # start -> ends
    for matcher in MATCHERS:
        for match in matcher(value):
            token, pattern = match["token"], match["pattern"]
            if len(token) >= MIN_PART[pattern] and not (pattern == "dictionary" and token.isdigit()):
                found.setdefault(match["i"], set()).add(match["j"] + 1)
    # best[i]: most characters from position i on that non-overlapping words can cover, and how.
    best: list[tuple[int, list[str]]] = [(0, [])] * (len(value) + 1)
    for i in range(len(value) - 1, -1, -1):
        best[i] = best[i + 1]
        for end in found.get(i, ()):
            covered = end - i + best[end][0]
            if covered > best[i][0]:
                best[i] = (covered, [value[i:end], *best[end][1]])
    return best[0][1]
