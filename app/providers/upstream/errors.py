"""What the relay's HTTP client raises.

Plain exceptions, not the gateway's error tree: the relay (``providers/relay.py``) decides what a
failed call means to a client. Mirrors httpcore's split between transport errors and the retryable
"the server never saw it" case.
"""

from __future__ import annotations


class UpstreamConnectionError(Exception):
    """The connection failed: refused, reset, closed mid-response, or the reply was not HTTP."""


class StaleConnection(UpstreamConnectionError):
    """The provider never handled the request (a kept-alive connection it had closed, a refused or
    GOAWAY-cut HTTP/2 stream): safe to send once more, on another connection."""
