"""Resumable streams: every stream's events in a log, replayed and followed on request."""
