"""Egress like a real HTTP client: proxies from the environment, CONNECT tunnels, SSL_CERT_FILE.

The relay's pool (``upstream_http``) calls two things, once per pool and once per new connection:

- ``EgressSettings.from_environ(os.environ)`` -> ``.proxy_for(scheme, host, port)``: the proxy a pool's
  origin goes through, or None. ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (either case, the
  lower-case one winning as in curl and httpx) and ``NO_PROXY`` (comma-separated hosts, domains
  with or without a leading dot matching their subdomains, IPs, ``host:port``, ``*``).
- ``open_tunnel(proxy, host, port)``: a connected socket to ``host:port`` through the proxy
  (``CONNECT``, with ``Proxy-Authorization: Basic`` from the proxy URL's user info), for
  ``loop.create_connection(..., sock=tunnel, ssl=..., server_hostname=host)`` to run TLS (and ALPN)
  inside, end to end with the provider. Plain-HTTP origins are tunnelled too, which every
  CONNECT-capable proxy accepts and which keeps one connection path.
- ``EgressSettings.ssl_context()``: the default context, with ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
  as its trust store when set (as httpx and the OpenAI SDK do).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: The most a proxy's CONNECT reply head may hold before we call it broken.
MAX_REPLY_HEAD = 16_384


class ProxyError(OSError):
    """The proxy refused or broke the tunnel (an OSError, so the relay maps it like a connect error)."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization header value


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def parse_proxy(url: str) -> Proxy:
    if "://" not in url:
        url = "http://" + url  # "proxy:3128", as curl accepts it
    parts = urlsplit(url)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"unsupported proxy scheme {parts.scheme!r} (http:// proxies only)")
    if not parts.hostname:
        raise ValueError(f"no host in proxy URL {url!r}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, authorization)


@dataclass(frozen=True)
class EgressSettings:
    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: tuple[str, ...] = ()
    cert_file: str = ""
    cert_dir: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EgressSettings:
        all_proxy = _env(environ, "all_proxy")
        return cls(
            https_proxy=_env(environ, "https_proxy") or all_proxy,
            http_proxy=_env(environ, "http_proxy") or all_proxy,
            no_proxy=tuple(p.strip().lower() for p in _env(environ, "no_proxy").split(",") if p.strip()),
            cert_file=environ.get("SSL_CERT_FILE", ""),
            cert_dir=environ.get("SSL_CERT_DIR", ""),
        )

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        url = self.https_proxy if scheme == "https" else self.http_proxy
        if not url or self.bypasses(host, port):
            return None
        return parse_proxy(url)

    def bypasses(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        for entry in self.no_proxy:
            if entry == "*":
                return True
            name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
            if entry_port and entry_port != str(port):
                continue
            name = name.strip("[]")
            if _ip_match(host, name):
                return True
            domain = name.lstrip(".")
            if host == domain or host.endswith("." + domain):
                return True
        return False

    def ssl_context(self) -> ssl.SSLContext:
        if self.cert_file or self.cert_dir:
            return ssl.create_default_context(cafile=self.cert_file or None, capath=self.cert_dir or None)
        return ssl.create_default_context()


def _has_port(entry: str) -> bool:
    if entry.startswith("["):  # [::1]:8080
        return "]:" in entry
    return entry.count(":") == 1


def _ip_match(host: str, entry: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return address in network


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A socket connected to ``host:port`` through ``proxy`` by CONNECT; the caller owns it.

    Bounded by the caller's connect deadline (the pool's ``asyncio.timeout``); raises ``ProxyError``
    when the proxy refuses, and closes the socket on every failure.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _name, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            await _connect_through(loop, sock, proxy, host, port)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or ProxyError(f"the proxy {proxy.host}:{proxy.port} could not be resolved")


async def _connect_through(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy, host: str, port: int
) -> None:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.authorization:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (head + "\r\n").encode("latin-1"))
    reply = b""
    # Read byte-exact up to the end of the head: whatever follows belongs to the tunnel (TLS), and a
    # proxy sends nothing after its 200 until we speak, so small reads cost only the head's size.
    while b"\r\n\r\n" not in reply:
        data = await loop.sock_recv(sock, 1024)
        if not data:
            raise ProxyError("the proxy closed the connection during CONNECT")
        reply += data
        if len(reply) > MAX_REPLY_HEAD:
            raise ProxyError("the proxy's CONNECT reply is too long")
    status_line = reply.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        raise ProxyError(f"the proxy sent no HTTP reply to CONNECT: {status_line[:80]!r}")
    if not 200 <= int(parts[1]) < 300:
        raise ProxyError(f"the proxy refused CONNECT {target}: {status_line[:120]}")
    if not reply.endswith(b"\r\n\r\n"):
        raise ProxyError("the proxy sent bytes after its CONNECT reply before the tunnel was used")
