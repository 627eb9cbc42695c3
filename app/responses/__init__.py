"""The OpenAI Responses API (API.md 7) on top of the chat pipeline: store, service, running responses."""
