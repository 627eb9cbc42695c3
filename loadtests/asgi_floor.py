"""The floor under the gateway: the same server and upstream client, nothing else (JSON and SSE).

    .venv/bin/python -m loadtests.asgi_floor --port 9400 --upstream http://127.0.0.1:9100   # prints READY <port>

uvicorn (uvloop, httptools, as the gateway runs) serving one plain ASGI function: read the body,
post it unchanged to the same path on the upstream through the gateway's own ``UpstreamPool`` (the
relay's HTTP/1.1 client), for ``/v1/embeddings`` check the reply's vectors as the gateway does
(``read_reply``), and write the reply back; a request with ``"stream": true`` gets the upstream's
SSE body relayed as it arrives, one ``send`` per read, as an ASGI app written the usual way does.
No framework, no keys, limits, metrics, log line, retries or cache. What the gateway costs above
this is its request path, not the server or the client (``embeddings_bench.py --floor`` runs it
beside the gateway; ``loadgen`` cells against it give the same for chat completions, JSON and SSE;
figures in loadtests/README.md). Only 127.0.0.1; stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
import uvloop

from loadtests.floor_parts import MAX_BODY, FloorUpstream, floor_args, loopback_socket, wants_stream


def floor_app(upstream_url: str) -> Any:
    upstream = FloorUpstream(upstream_url)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while len(body) <= MAX_BODY:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        response = await upstream.post(path, body)
        if wants_stream(body):
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            while data := await response.read_some():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            response.release()
            await send({"type": "http.response.body", "body": b""})
            return
        raw = await upstream.whole(response, path)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return app


def main() -> None:
    args = floor_args(__doc__)
    sock = loopback_socket(args.port)
    # As the gateway runs uvicorn (app/server/serve.py): uvloop's loop, httptools, no proxy-headers
    # middleware. ``Server.serve`` inside our own loop does not pick the loop from the config.
    config = uvicorn.Config(
        floor_app(args.upstream), log_level="warning", access_log=False, http="httptools", proxy_headers=False
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"READY {sock.getsockname()[1]}", flush=True)
        done, _ = await asyncio.wait({task}, timeout=args.max_seconds)
        if not done:
            server.should_exit = True
            await task

    uvloop.run(run())


if __name__ == "__main__":
    main()
