"""Named keys for the limit tests: one key per limit, so that tests never share a counter."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.conftest import settings_dict
from tests.helpers.fake_provider import Behaviour, FakeProvider

KEYS = {
    "allow": "sk-allow-0123456789abcdef",
    "rpm": "sk-rpm-0123456789abcdef",
    "tpm": "sk-tpm-0123456789abcdef",
    "conc": "sk-conc-0123456789abcdef",
    "budget": "sk-budget-0123456789abcdef",
    "forever": "sk-forever-0123456789abcdef",
    "hashed": "sk-hashed-0123456789abcdef",
}
DEFAULT_KEY = "sk-default-0123456789abcdef"
ENV = {f"KEY_{name.upper()}": key for name, key in KEYS.items() if name != "hashed"} | {"GATEWAY_KEYS": DEFAULT_KEY}
#: 1000 tokens in and out at $100 per million each: $0.20 a call.
PRICED = Behaviour(usage=(1000, 1000))


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def keys_settings_dict(fake: FakeProvider, **sections: dict[str, Any]) -> dict[str, Any]:
    fake.set_behaviour("priced", PRICED)
    data = settings_dict(fake.base_url, server={"api_keys_env": "GATEWAY_KEYS"}, **sections)
    data["models"]["deployments"].append(
        {
            "name": "priced",
            "litellm_model": "openai/priced",
            "api_base": fake.base_url,
            "info": {"input_cost_per_mtok": 100.0, "output_cost_per_mtok": 100.0},
        }
    )

    def key(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "key_env": f"KEY_{name.upper()}", **extra}

    data["keys"] = [
        key("allow", models=["normal", "slow*"]),
        key("rpm", requests_per_minute=3),
        key("tpm", tokens_per_minute=300),
        key("conc", concurrent_streams=1),
        key("budget", budget_usd=0.5, budget_window="day"),
        key("forever", budget_usd=0.1, budget_window="total"),
        {"name": "hashed", "key_sha256": hashlib.sha256(KEYS["hashed"].encode()).hexdigest(), "models": ["normal"]},
    ]
    return data
