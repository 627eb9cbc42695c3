"""The vendored browser code is what app/static/vendor/README.md says it is: same files, same hashes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / "app" / "static" / "vendor"
ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| [^|]+ \| `(?P<sha>[0-9a-f]{64})` \|$")


def manifest() -> dict[str, str]:
    rows = (ROW.match(line) for line in (VENDOR / "README.md").read_text(encoding="utf-8").splitlines())
    return {m["file"]: m["sha"] for m in rows if m}


def test_every_vendored_file_is_listed_with_its_hash() -> None:
    listed = manifest()
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file() and p.name != "README.md"}
    assert present == set(listed), (
        f"unlisted: {sorted(present - set(listed))}, missing: {sorted(set(listed) - present)}"
    )
    for name, sha in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == sha, f"{name} differs from the manifest"


def test_every_package_ships_its_licence() -> None:
    for package in ("marked", "dompurify", "swagger-ui"):
        assert (VENDOR / package / "LICENSE").stat().st_size > 500, package
