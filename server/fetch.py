"""The one HTTP client for URLs that clients give us (input images, webhooks), guarded against SSRF.

Every hop is resolved once and its address checked: loopback, private, link-local (cloud metadata), multicast
and other non-public ranges are refused unless allow-listed; the request then goes to that very address
(Host header and TLS server name kept), so DNS cannot change its answer between check and connect.
Redirects are followed by hand, each re-checked, up to a limit; responses are cut off at a byte limit.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(ValueError):
    """A URL we will not or cannot fetch; the message names the URL and the reason."""


@dataclass(frozen=True)
class FetchPolicy:
    allow: tuple[str, ...] = ()  # networks (CIDR) reachable although not public, e.g. "127.0.0.0/8"
    max_bytes: int = 50 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_redirects: int = 5

    def allowed(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in ipaddress.ip_network(net, strict=False) for net in self.allow):
            return True
        return address.is_global and not address.is_multicast


def short(url: str) -> str:
    return url if len(url) <= 100 else url[:97] + "..."


def resolve(url: str, policy: FetchPolicy) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The URL rewritten to the checked address, the Host header and the TLS server name to send with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{short(url)}: only http and https URLs can be fetched")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise FetchError(f"{short(url)}: cannot resolve {host} ({err})") from None
    address = ipaddress.ip_address(infos[0][4][0].split("%")[0])
    if not policy.allowed(address):
        raise FetchError(f"{short(url)}: {host} resolves to {address}, a non-public address this server does "
                         "not fetch from")
    pinned_host = f"[{address}]" if address.version == 6 else str(address)
    pinned = urlunsplit((parts.scheme, f"{pinned_host}:{port}", parts.path or "/", parts.query, ""))
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return httpx.URL(pinned), headers, extensions


def guarded_request(method: str, url: str, policy: FetchPolicy, content: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of the final response; redirects followed only while policy.max_redirects allows."""
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            pinned, host_header, extensions = resolve(url, policy)
            request = client.build_request(method, pinned, content=content,
                                           headers={**(headers or {}), **host_header}, extensions=extensions)
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as err:
                raise FetchError(f"{short(url)}: {type(err).__name__}: {err}") from None
            try:
                if response.is_redirect and policy.max_redirects:
                    url = urljoin(url, response.headers["location"])
                    continue
                return response.status_code, _read_limited(response, url, policy.max_bytes)
            finally:
                response.close()
    raise FetchError(f"{short(url)}: more than {policy.max_redirects} redirects")


def _read_limited(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = int(response.headers.get("content-length") or 0)
    if declared > max_bytes:
        raise FetchError(f"{short(url)}: {declared} bytes is more than the limit of {max_bytes}")
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"{short(url)}: more than the limit of {max_bytes} bytes")
    except httpx.HTTPError as err:
        raise FetchError(f"{short(url)}: {type(err).__name__}: {err}") from None
    return bytes(body)


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body of a 200 response to GET `url`."""
    status, body = guarded_request("GET", url, policy)
    if status != 200:
        raise FetchError(f"{short(url)}: the server answered HTTP {status}")
    return body
