"""The guarded fetch client: address checks on every hop, redirects, limits, timeouts (loopback only)."""

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.fetch import FetchError, FetchPolicy, fetch, guarded_request

ALLOW_127_2 = FetchPolicy(allow=("127.0.0.2/32",), read_timeout=1.0)


class Handler(BaseHTTPRequestHandler):
    other = ""  # base URL of the other server, for cross-host redirects

    def do_GET(self) -> None:
        routes = {
            "/ok": (200, {}, b"hello"),
            "/host": (200, {}, self.headers["host"].encode()),
            "/missing": (404, {}, b""),
            "/to-other": (302, {"Location": f"{Handler.other}/ok"}, b""),
            "/to-self": (302, {"Location": "/ok"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/big": (200, {}, b"x" * 2_000_000),
        }
        if self.path == "/slow":
            time.sleep(3)
        status, headers, body = routes.get(self.path, (200, {}, b"late"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def serve(address: str) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((address, 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str]]:
    """An allowed host on 127.0.0.2 and a refused one on 127.0.0.1, each redirecting to the other on /to-other."""
    allowed, refused = serve("127.0.0.2"), serve("127.0.0.1")
    urls = (f"http://127.0.0.2:{allowed.server_address[1]}", f"http://127.0.0.1:{refused.server_address[1]}")
    Handler.other = urls[1]
    yield urls
    allowed.shutdown()
    refused.shutdown()


def test_allowed_host_is_fetched_with_its_host_header(hosts: tuple[str, str]) -> None:
    allowed, _ = hosts
    assert fetch(f"{allowed}/ok", ALLOW_127_2) == b"hello"
    assert fetch(f"{allowed}/to-self", ALLOW_127_2) == b"hello"
    assert fetch(f"{allowed}/host", ALLOW_127_2).decode() == allowed.removeprefix("http://")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://localhost/x", "http://10.1.2.3/x", "http://192.168.0.1/x", "http://172.16.5.4/",
     "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/", "http://0.0.0.0/", "http://224.0.0.1/",
     "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "http://[fd00::1]/"],
)
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(FetchError, match="non-public address"):
        fetch(url, FetchPolicy())


def test_redirect_to_a_refused_host_is_refused(hosts: tuple[str, str]) -> None:
    allowed, refused = hosts
    with pytest.raises(FetchError, match="127.0.0.1, a non-public address"):
        fetch(f"{allowed}/to-other", ALLOW_127_2)
    with pytest.raises(FetchError, match="non-public"):
        fetch(f"{refused}/ok", ALLOW_127_2)


def test_limits_on_redirects_size_time_and_status(hosts: tuple[str, str]) -> None:
    allowed, _ = hosts
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(f"{allowed}/loop", ALLOW_127_2)
    with pytest.raises(FetchError, match="limit of 1000000"):
        fetch(f"{allowed}/big", FetchPolicy(allow=("127.0.0.2/32",), max_bytes=1_000_000))
    with pytest.raises(FetchError, match="ReadTimeout"):
        fetch(f"{allowed}/slow", ALLOW_127_2)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{allowed}/missing", ALLOW_127_2)
    no_redirects = FetchPolicy(allow=("127.0.0.2/32",), max_redirects=0)
    assert guarded_request("GET", f"{allowed}/to-self", no_redirects)[0] == 302  # webhooks do not follow


def test_unusable_urls() -> None:
    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost", "gopher://x"):
        with pytest.raises(FetchError, match="only http and https"):
            fetch(url, FetchPolicy())
    with pytest.raises(FetchError, match="cannot resolve"):
        fetch("http://no-such-host.invalid/x", FetchPolicy())


def test_a_closed_port_is_an_error_not_a_hang() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match="ConnectError"):
        fetch(f"http://127.0.0.2:{port}/x", ALLOW_127_2)
