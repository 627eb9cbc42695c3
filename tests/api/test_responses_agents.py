"""An OpenAI Agents SDK agent against the gateway's Responses API (docs/responses.md): it calls two function
tools, one turn each, then answers from their results. The gateway is a real ``python -m app`` in
front of the fake provider scripted for the run (``scripted_reply``: get_weather, get_time, answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from loadtests.processes import GatewayProcess
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.responses_support import KEY_A, start_gateway

try:
    import agents
except ImportError:  # the test must fail, not skip: CI installs it (.ci/run)
    agents = None


@pytest.fixture(scope="module")
def agents_gateway(fake_provider: FakeProvider, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("agents-gateway"), fake_provider)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("streamed", [False, True])
async def test_agent_calls_two_tools_then_answers(
    agents_gateway: GatewayProcess, fake: FakeProvider, streamed: bool
) -> None:
    if agents is None:
        pytest.fail("openai-agents is not installed: pip install --no-deps -r requirements-agents.lock")
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(f"weather:{city}")
        return "sunny and 21C"

    @agents.function_tool
    def get_time(city: str) -> str:
        """The local time in a city."""
        called.append(f"time:{city}")
        return "14:05"

    client = AsyncOpenAI(base_url=f"{agents_gateway.base_url}/v1", api_key=KEY_A, max_retries=0, timeout=15)
    model = agents.OpenAIResponsesModel(model="script_two_tools", openai_client=client)
    agent = agents.Agent(
        name="Weather", instructions="Answer with the tools.", tools=[get_weather, get_time], model=model
    )
    config = agents.RunConfig(tracing_disabled=True)  # nothing may leave the machine
    question = "What is the weather and the time in Paris?"
    if streamed:
        result: Any = agents.Runner.run_streamed(agent, question, run_config=config)
        async for _ in result.stream_events():
            pass
    else:
        result = await agents.Runner.run(agent, question, run_config=config)
    await client.close()
    assert called == ["weather:Paris", "time:Paris"]
    assert result.final_output == "Weather: sunny and 21C; time: 14:05."
    calls = [r for r in fake.requests if r.model == "script_two_tools"]
    assert len(calls) == 3
    assert [m["role"] for m in calls[2].body["messages"]].count("tool") == 2
