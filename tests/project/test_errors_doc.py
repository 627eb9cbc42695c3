"""docs/errors.md lists exactly the error codes the gateway sends, both ways.

The codes come from three places in the code: ``app.errors.CODES`` (the table), every ``GatewayError``
subclass's (status, type, default code), and every code literal in app/ (``code="..."``, ``"code": "..."``)
so that a code raised somewhere new fails here until it is in the table and the doc.
"""

from __future__ import annotations

import re
from pathlib import Path

import app
from app.domain import errors
from app.domain.errors import CODES, ErrorCode, GatewayError

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\| (?P<status>\d{3}) \| `(?P<type>[a-z_]+)` \| (?P<codes>[^|]*) \|")
LITERAL = re.compile(r"""\bcode\s*=\s*"([a-z_]+)"|"code"\s*:\s*"([a-z_]+)\"""")


def documented() -> set[ErrorCode]:
    rows: set[ErrorCode] = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            for code in re.findall(r"`([a-z_]+)`", match["codes"]):
                rows.add(ErrorCode(int(match["status"]), match["type"], code))
    return rows


def subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


def test_the_doc_lists_exactly_the_code_table() -> None:
    table, doc = set(CODES), documented()
    assert len(table) == len(CODES), "a code is listed twice in app.errors.CODES"
    assert sorted(table - doc) == [], "codes missing from docs/errors.md"
    assert sorted(doc - table) == [], "codes documented that app.errors.CODES does not have"


def test_every_error_class_is_in_the_table() -> None:
    for cls in [GatewayError, *subclasses(GatewayError)]:
        if cls.__module__ != errors.__name__ or cls.__name__ == "ReplayedError":
            continue  # a replayed error repeats one that is in the table; _HTTPError-style carriers take codes
        assert ErrorCode(cls.status, cls.type, cls.default_code) in CODES, cls.__name__


def test_every_code_literal_in_the_app_is_in_the_table() -> None:
    known = {c.code for c in CODES}
    root = Path(app.__file__).parent
    literals = {
        (path.relative_to(root).as_posix(), code)
        for path in root.rglob("*.py")
        for groups in LITERAL.findall(path.read_text(encoding="utf-8"))
        for code in groups
        if code
    }
    assert literals, "the scan found no code literals at all"
    assert sorted((where, code) for where, code in literals if code not in known) == []


def test_docs_and_code_cite_no_document_outside_the_repository() -> None:
    # The design notes the project started from are not part of it: docs and comments stand alone.
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    sources = sorted(Path(app.__file__).parent.rglob("*.py"))
    citing = [p.relative_to(REPO_ROOT).as_posix() for p in pages + sources if "API.md" in p.read_text(encoding="utf-8")]
    assert citing == []
