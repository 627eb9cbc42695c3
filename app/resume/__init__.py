"""Resumable streams (API.md 1.3): every stream's events in a log, replayed and followed on request."""
