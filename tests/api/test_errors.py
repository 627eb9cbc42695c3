"""The one error mapping: 500s hide their detail in production and show it in development."""

from __future__ import annotations

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from app.config.settings import Settings, settings_from_dict
from app.domain.errors import InternalError, RateLimited, public_error
from app.server.http_errors import EXCEPTION_HANDLERS


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("database password is hunter2")


def settings(env: str) -> Settings:
    return settings_from_dict(
        {"server": {"env": env}, "models": {"deployments": [{"name": "demo", "litellm_model": "demo/demo"}]}}, {}
    )


@pytest.mark.parametrize(("env", "leaks"), [("production", False), ("development", True)])
def test_unexpected_error_is_a_500_in_the_contract_shape(env: str, leaks: bool) -> None:
    app = Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)
    app.state.settings = settings(env)
    with TestClient(app) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert ("hunter2" in error["message"]) is leaks


def test_public_error_passes_gateway_errors_and_sets_retry_after() -> None:
    limited = RateLimited("slow down", retry_after=3)
    assert public_error(limited, production=True) is limited
    assert limited.headers() == {"Retry-After": "3"}
    assert RateLimited("no hint").headers() == {"Retry-After": "1"}
    assert isinstance(public_error(ValueError("x"), production=True), InternalError)
