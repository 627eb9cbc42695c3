"""Import LiteLLM offline-safe: local model cost map, no telemetry, no callbacks.

LiteLLM downloads its model map at import unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set first,
so every module that needs LiteLLM gets it from here.
"""

from __future__ import annotations

import os
from types import ModuleType

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("LITELLM_LOG", "ERROR")


def import_litellm() -> ModuleType:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    litellm.turn_off_message_logging = True
    return litellm
