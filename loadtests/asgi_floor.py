"""The floor under the gateway's embeddings path: the same server and upstream client, nothing else.

    .venv/bin/python -m loadtests.asgi_floor --port 9400 --upstream http://127.0.0.1:9100   # prints READY <port>

uvicorn (uvloop, httptools, as the gateway runs) serving one plain ASGI function: read the body,
send the model and input on to the upstream's ``/v1/embeddings`` through the gateway's own
``UpstreamPool`` (the relay's HTTP/1.1 client), check the reply's vectors as the gateway does
(``read_reply``) and write the reply back. No framework, no keys, limits, metrics, log line,
retries or cache. What the gateway costs above this is its request path, not the server or the
client (``embeddings_bench.py --floor`` runs it beside the gateway; figures in README.md).
Only 127.0.0.1; stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import msgspec
import uvicorn
from yarl import URL

from app.api.embeddings.wire import read_reply
from app.providers.upstream import RequestTemplate, UpstreamPool

MAX_BODY = 1 << 20


def floor_app(upstream: str) -> Any:
    url = URL(upstream) / "v1" / "embeddings"
    template = RequestTemplate(url, {"Content-Type": "application/json", "Authorization": "Bearer floor"})
    pools: list[UpstreamPool] = []  # made on first use, inside the server's loop

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
        if not pools:
            pools.append(UpstreamPool(url.origin()))
        request = msgspec.json.decode(body)
        out = msgspec.json.encode({"model": request["model"], "input": request["input"], "encoding_format": "float"})
        response = await pools[0].post(template, out)
        raw = await response.read(limit=64 << 20)
        response.release()
        read_reply(raw)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="0: any free port (READY says which)")
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9100")
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(floor_app(args.upstream), log_level="warning", access_log=False)
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

    asyncio.run(run())


if __name__ == "__main__":
    main()
