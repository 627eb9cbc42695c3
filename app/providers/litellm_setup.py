"""Import LiteLLM offline-safe: local model cost map, no telemetry, no callbacks.

LiteLLM downloads its model map at import unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set first,
so every module that needs LiteLLM gets it from here; the environment is set when LiteLLM is
imported, not when this module is (a relay-only gateway never imports it at all).
"""

from __future__ import annotations

import os
from types import ModuleType

OFFLINE_ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
}


def import_litellm() -> ModuleType:
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    litellm.turn_off_message_logging = True
    # Its token counter fetches a Hugging Face tokenizer for some model names (Llama, DeepSeek,
    # Command R: ``meta-llama/...`` behind a vLLM deployment) from huggingface.co, on the first count
    # of each: the gateway would reach the internet because a client asked for a count (or retry for
    # some 20 s, printing each try, where it cannot). The count is an estimate: tiktoken's, shipped.
    litellm.disable_hf_tokenizer_download = True
    return litellm
