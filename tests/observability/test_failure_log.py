"""The request log's upstream-failure fields (app/observability/failure_log.py): deployment, host, exception chain.

The end-to-end check (a real ``python -m app`` whose provider refuses connections) is in test_cli.py;
these cover the rules on their own.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from app.config.settings import settings_from_dict
from app.domain.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from app.observability.failure_log import error_chain, upstream_failure, upstream_host


class _App:
    def __init__(self) -> None:
        self.state = type("State", (), {})()
        self.state.settings = settings_from_dict(
            {
                "models": {
                    "deployments": [
                        {"name": "local", "litellm_model": "openai/llama", "api_base": "http://10.0.0.7:8000/v1"},
                        {"name": "cloud", "litellm_model": "openai/gpt-4o-mini"},
                    ]
                }
            },
            environ={},
        )


def failed(outer: Exception, *causes: BaseException) -> Exception:
    """``outer`` raised from ``causes[0]``, raised from ``causes[1]``, ..."""
    chain = [outer, *causes]
    for upper, lower in pairwise(chain):
        upper.__cause__ = lower
    return outer


def test_chain_runs_from_the_gateway_error_to_the_root_cause() -> None:
    error = failed(UpstreamUnavailable("x"), OSError("y"), ConnectionRefusedError(111, "refused"))
    assert error_chain(error) == ["UpstreamUnavailable", "OSError", "ConnectionRefusedError"]


def test_fields_name_deployment_host_and_exception() -> None:
    scope: dict[str, Any] = {"app": _App()}
    error = failed(UpstreamTimeout("late"), TimeoutError())
    assert upstream_failure(scope, "local", error) == {
        "error_class": "TimeoutError",
        "error_chain": "UpstreamTimeout <- TimeoutError",
        "deployment": "local",
        "provider_model": "openai/llama",
        "upstream_host": "10.0.0.7:8000",
    }


def test_a_provider_default_endpoint_is_named() -> None:
    assert upstream_host("openai/gpt-4o-mini", "") == "api.openai.com"


def test_client_errors_add_nothing() -> None:
    assert upstream_failure({"app": _App()}, "local", InvalidRequest("bad")) == {}


def test_unknown_model_still_names_the_exception() -> None:
    fields = upstream_failure({}, "nope", failed(UpstreamUnavailable("x"), ConnectionResetError()))
    assert fields == {
        "error_class": "ConnectionResetError",
        "error_chain": "UpstreamUnavailable <- ConnectionResetError",
    }
