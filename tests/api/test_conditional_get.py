"""The page and its static files are revalidated, not downloaded again: a matching If-None-Match is a 304.

They are served ``no-cache`` (a browser asks again on every load, so a new version shows at once);
what keeps that cheap is the ETag: while it matches, the answer is ``304 Not Modified`` without a
body (RFC 9110 13.1.2, weak comparison).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

PATHS = ["/", "/static/vendor/marked/marked.umd.js", "/static/favicon.svg"]


@pytest.fixture(scope="module")
def server(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    gateway = ServerThread(make_settings(fake_provider.base_url)).start()
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("path", PATHS)
def test_a_matching_etag_is_answered_not_modified(server: ServerThread, path: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        first = client.get(path)
        assert first.status_code == 200 and first.content
        assert first.headers["cache-control"] == "no-cache"
        etag = first.headers["etag"]
        for offered in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = client.get(path, headers={"If-None-Match": offered})
            assert again.status_code == 304, offered
            assert again.content == b""
            assert again.headers["etag"] == etag
            assert again.headers["cache-control"] == "no-cache"
            assert again.headers["x-request-id"]
            assert "content-type" not in again.headers
        changed = client.get(path, headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200 and changed.content == first.content


def test_a_head_request_is_revalidated_too(server: ServerThread) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        etag = client.head("/static/favicon.svg").headers["etag"]
        head = client.head("/static/favicon.svg", headers={"If-None-Match": etag})
        assert head.status_code == 304 and head.headers["etag"] == etag


def test_the_page_etag_is_its_content(server: ServerThread) -> None:
    # Read per request, so an edited page shows without a restart: its ETag follows its bytes.
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.get("/").headers["etag"] == client.get("/").headers["etag"]
        assert client.get("/").headers["etag"] != client.get("/static/favicon.svg").headers["etag"]


def test_other_requests_pass_untouched(server: ServerThread, fake: FakeProvider) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        answer = client.post("/v1/chat/completions", json=chat_body("normal"), headers={"If-None-Match": "*"})
        assert answer.status_code == 200 and answer.json()["choices"]
        models = client.get("/v1/models", headers={"If-None-Match": "*"})
        assert models.status_code == 200 and models.json()["data"]  # no ETag: nothing to compare
