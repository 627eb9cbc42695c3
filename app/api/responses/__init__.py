"""The OpenAI Responses API (docs/responses.md) on top of the chat pipeline: store, service, running responses."""
