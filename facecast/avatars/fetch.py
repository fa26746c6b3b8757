"""Get a portrait photo safely: from an http(s) URL supplied by an untrusted user, or from a local file.

`fetch_image` is the server's SSRF defence (`POST /v1/avatars {"image_url": ...}`):

- only `http` and `https`, no `user:pass@`;
- the host is resolved here and *every* address must be public (not loopback, private, link-local — which
  includes the cloud metadata service 169.254.169.254 —, CGNAT, multicast, reserved, ...) unless it lies in
  `FetchPolicy.allow_networks` (`FACECAST_FETCH_ALLOW_NETWORKS`);
- the connection goes to the address that was checked (pinned), so a second DNS answer cannot switch the
  target (DNS rebinding); TLS still verifies the certificate against the hostname;
- redirects are followed by hand, a few at most, and each hop is checked from scratch;
- one wall-clock deadline covers the whole fetch (DNS, connects, redirects, body), and the body is counted
  while it streams, whatever Content-Length says;
- the bytes must be a PNG, JPEG or WebP whose header size is sane (no decompression bombs) and that decodes.

`load_image_source` also reads local paths: it is for trusted input (the CLI). A server must call
`fetch_image` so that an API user cannot make it read the server's own files.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import os
import re
import socket
import ssl
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import cv2
import numpy as np

from facecast import __version__, settings
from facecast.avatars.bundle import BundleError, header_size

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "FetchError",
    "FetchPolicy",
    "FetchedImage",
    "check_image_bytes",
    "decode_image",
    "fetch_image",
    "is_public_address",
    "load_image_source",
    "read_image_file",
]

IMAGE_MEDIA_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_NETWORKS_ENV = settings.FETCH_ALLOW_NETWORKS.name
MAX_BYTES_ENV = settings.FETCH_MAX_BYTES.name
TIMEOUT_ENV = settings.FETCH_TIMEOUT_S.name

DEFAULT_MAX_PIXELS = 4096 * 4096
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Content-Type values accepted before the bytes are looked at (the magic decides the real type):
# the image types, the common misspelling image/jpg, and the generic binary types of object stores.
_ACCEPTED_CONTENT_TYPES = frozenset(
    {*IMAGE_MEDIA_TYPES, "image/jpg", "application/octet-stream", "binary/octet-stream"}
)
_CHUNK = 64 * 1024
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_ALLOW_HINT = f"only public addresses are allowed (set {ALLOW_NETWORKS_ENV} to allow a private range)"


class FetchError(ValueError):
    """The image could not be fetched or is not an acceptable image; the message says what to do."""


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits for one fetch. `allow_networks` are ranges allowed even though they are not public."""

    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 15.0  # total wall-clock budget for the whole fetch, redirects included
    max_redirects: int = 3
    allow_networks: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"FetchPolicy.max_bytes must be positive, not {self.max_bytes}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(
                f"FetchPolicy.timeout_s must be a positive number of seconds, not {self.timeout_s}"
            )
        if self.max_redirects < 0:
            raise ValueError(f"FetchPolicy.max_redirects must be 0 or more, not {self.max_redirects}")
        for net in self.allow_networks:
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ValueError(f"FetchPolicy.allow_networks holds {net!r}; use ipaddress.ip_network(...)")

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """The default policy, changed by FACECAST_FETCH_ALLOW_NETWORKS ("127.0.0.0/8,10.0.0.0/8"),
        FACECAST_FETCH_MAX_BYTES and FACECAST_FETCH_TIMEOUT_S; a bad value raises ValueError naming it."""
        default = cls()
        networks = settings.FETCH_ALLOW_NETWORKS.get() or ()
        max_bytes = settings.FETCH_MAX_BYTES.get(default=default.max_bytes)
        timeout_s = settings.FETCH_TIMEOUT_S.get(default=default.timeout_s)
        return cls(
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            max_redirects=default.max_redirects,
            allow_networks=tuple(networks),
        )


@dataclass(frozen=True, slots=True)
class FetchedImage:
    data: bytes
    media_type: str  # "image/png" | "image/jpeg" | "image/webp", from the bytes' magic, not a header
    source: str  # the final URL (after redirects) or the path


# ---------------------------------------------------------------------------------------------- addresses

_V4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared, RFC 6598) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (the range of the cloud metadata service)"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "a reserved (IETF protocol assignment) address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "a reserved (IETF protocol assignment, e.g. Teredo) address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a reserved (SRv6) address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _address_kind(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address ("a loopback address", ...), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        form = ""
        if ip.ipv4_mapped is not None:
            embedded, form = ip.ipv4_mapped, "IPv4-mapped"
        elif ip in _NAT64:
            embedded, form = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
        elif ip.sixtofour is not None:
            embedded, form = ip.sixtofour, "6to4"
        if embedded is not None:
            kind = _address_kind(embedded)
            return None if kind is None else f"{kind} in {form} form ({embedded})"
        table: tuple[tuple[IPNetwork, str], ...] = _V6_SPECIAL
    else:
        table = _V4_SPECIAL
    for net, kind in table:
        if ip in net:
            return kind
    # The standard library's view as a second opinion (its tables grow with new Python versions).
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-global address"
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` is a globally reachable unicast address: False for loopback, private (RFC 1918,
    fc00::/7), link-local (169.254/16 with the cloud metadata service, fe80::/10), multicast, reserved,
    unspecified, CGNAT 100.64/10, benchmarking 198.18/15, site-local, documentation ranges, and for the
    IPv4-mapped, 6to4 and NAT64 forms of any of those."""
    return _address_kind(ip) is None


def _is_allowed(ip: IPAddress, policy: FetchPolicy) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c.version == net.version and c in net for c in candidates for net in policy.allow_networks)


# ------------------------------------------------------------------------------------------------- images


def _webp_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from the first chunk of a WebP: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    bad = FetchError(f"{where}: WebP without a readable header (truncated or corrupt); use another image")
    if len(data) < 30:
        raise bad
    chunk = data[12:16]
    if chunk == b"VP8 ":
        # 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height (2 bits of scaling each).
        if data[23:26] != b"\x9d\x01\x2a":
            raise bad
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        # Signature 0x2f, then 14 bits width - 1 and 14 bits height - 1.
        if data[20] != 0x2F:
            raise bad
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # Flags (1 byte), reserved (3), canvas width - 1 (24 bits), canvas height - 1 (24 bits).
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise bad


def _sniff(data: bytes, where: str) -> tuple[str, int, int]:
    """(media type, width, height) from the magic and the header, before anything is decoded."""
    if not data:
        raise FetchError(f"{where}: the image is empty; use a PNG, JPEG or WebP photo")
    png = data.startswith(b"\x89PNG\r\n\x1a\n")
    if png or data.startswith(b"\xff\xd8\xff"):
        try:
            width, height = header_size(data, where)
        except BundleError as e:
            raise FetchError(f"{e} (truncated or corrupt); use another image") from None
        return ("image/png" if png else "image/jpeg"), width, height
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", *_webp_size(data, where)
    head = data[:256].lstrip().lower()
    hint = (
        " (it looks like an HTML or XML page)" if head.startswith((b"<!doctype", b"<html", b"<?xml")) else ""
    )
    hint = hint or (" (it is a GIF)" if data.startswith((b"GIF87a", b"GIF89a")) else "")
    raise FetchError(f"{where}: not a PNG, JPEG or WebP image{hint}; use a PNG, JPEG or WebP photo")


def _check_and_decode(data: bytes, where: str, max_pixels: int) -> tuple[str, np.ndarray]:
    media_type, width, height = _sniff(data, where)
    if width == 0 or height == 0 or width * height > max_pixels:
        raise FetchError(
            f"{where}: the image is {width}×{height}; the limit is {max_pixels} pixels "
            "(e.g. 4096×4096) — resize it and try again"
        )
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise FetchError(
            f"{where}: the {media_type.removeprefix('image/').upper()} header is fine but the image does "
            "not decode (truncated or corrupt); save it again or use another image"
        )
    # IMREAD_COLOR applies the EXIF orientation, which may swap the sides.
    if sorted(bgr.shape[:2]) != sorted((height, width)):
        raise FetchError(
            f"{where}: the header says {width}×{height} but the image decodes to "
            f"{bgr.shape[1]}×{bgr.shape[0]}; save it again or use another image"
        )
    return media_type, bgr


def check_image_bytes(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The media type of `data` (PNG, JPEG or WebP by its magic) after checking the header's size
    (at most `max_pixels`, before any decoding: image bombs) and that OpenCV decodes it."""
    return _check_and_decode(data, where, max_pixels)[0]


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """Checked and decoded with EXIF orientation applied: (h, w, 3) uint8 RGB, C-contiguous."""
    _, bgr = _check_and_decode(data, where, DEFAULT_MAX_PIXELS)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


# -------------------------------------------------------------------------------------------------- files


def read_image_file(path: str | os.PathLike[str], policy: FetchPolicy = FetchPolicy()) -> FetchedImage:
    """A local image file, checked like a fetched one (size limit first, then the bytes)."""
    where = os.fspath(path)
    try:
        info = os.stat(where)
    except FileNotFoundError:
        raise FetchError(f"{where}: no such file; check the path") from None
    except OSError as e:
        raise FetchError(f"{where}: cannot read it ({e.strerror or e}); check the path") from None
    if stat.S_ISDIR(info.st_mode):
        raise FetchError(f"{where}: is a directory, not an image file; give the path of a PNG, JPEG or WebP")
    if not stat.S_ISREG(info.st_mode):
        raise FetchError(f"{where}: is not a regular file; give the path of a PNG, JPEG or WebP")
    if info.st_size > policy.max_bytes:
        raise FetchError(
            f"{where}: the file is {info.st_size} bytes; the limit is {policy.max_bytes} bytes "
            f"({MAX_BYTES_ENV}) — use a smaller image"
        )
    try:
        with Path(where).open("rb") as f:
            data = f.read(policy.max_bytes + 1)
    except OSError as e:
        raise FetchError(f"{where}: cannot read it ({e.strerror or e}); check the path") from None
    if len(data) > policy.max_bytes:  # it grew since the stat
        raise FetchError(
            f"{where}: the file is over {policy.max_bytes} bytes ({MAX_BYTES_ENV}); use a smaller image"
        )
    return FetchedImage(data=data, media_type=check_image_bytes(data, where), source=where)


def load_image_source(source: str, policy: FetchPolicy = FetchPolicy()) -> FetchedImage:
    """An http(s) URL through `fetch_image`, anything without a scheme as a local path. Other schemes
    (file:, ftp:, data:, ...) are refused. For trusted input only: servers call `fetch_image`."""
    match = _SCHEME_RE.match(source)
    if match and len(match.group(1)) > 1:  # "C:\\photo.png" is a Windows path, not a scheme
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return fetch_image(source, policy)
        raise FetchError(
            f"{source[:200]}: {scheme}: URLs are not supported; give an http(s) URL or a local path "
            "(write ./name for a file whose name contains ':')"
        )
    return read_image_file(source, policy)


# ---------------------------------------------------------------------------------------------------- web


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    scheme: str
    host: str  # as the certificate and the Host header see it (IDNA-encoded, no brackets)
    port: int
    path: str  # the request target: path and query


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    reason: str
    location: str | None = None
    data: bytes = b""


class _Deadline:
    """One wall-clock budget for a whole fetch. A watchdog shuts the current socket down when it runs
    out, so that a server trickling bytes cannot stretch a fetch past the budget."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def error(self) -> FetchError:
        return FetchError(
            f"fetching {self.url} took longer than {self.timeout_s:g} s; "
            f"use a faster host or raise {TIMEOUT_ENV}"
        )

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def watch(self, sock: socket.socket) -> None:
        timer = threading.Timer(self.remaining(), self._kill)
        timer.daemon = True
        with self._lock:
            self._sock, self._timer = sock, timer
        timer.start()

    def release(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._sock = self._timer = None

    def _kill(self) -> None:
        with self._lock:
            if self._sock is not None:
                # The plain socket call, also for an SSLSocket: it only wakes the blocked reader up.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _connect_pinned(addresses: list[tuple[int, tuple]], deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers (no new DNS lookup)."""
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address checked beforehand; the Host header still names the host."""

    def __init__(self, target: _Target, addresses: list[tuple[int, tuple]], deadline: _Deadline) -> None:
        super().__init__(target.host, target.port, timeout=deadline.remaining())
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        sock = _connect_pinned(self._addresses, self._deadline)
        self._deadline.watch(sock)
        self.sock = sock


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; the certificate is verified against the hostname."""

    def __init__(self, target: _Target, addresses: list[tuple[int, tuple]], deadline: _Deadline) -> None:
        context = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=deadline.remaining(), context=context)
        self._addresses = addresses
        self._deadline = deadline
        self._tls = context

    def connect(self) -> None:
        sock = _connect_pinned(self._addresses, self._deadline)
        try:
            tls = self._tls.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        self.sock = tls
        self._deadline.watch(tls)
        tls.settimeout(self._deadline.remaining())
        tls.do_handshake()


def _parse_target(url: str, refusing: str) -> _Target:
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError(f"{refusing}: the URL contains spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise FetchError(f"{refusing}: not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}: URLs are" if scheme else "a URL without a scheme is"
        raise FetchError(f"{refusing}: {shown} not supported; give an http:// or https:// URL")
    if "@" in parts.netloc:
        raise FetchError(
            f"{refusing}: URLs with a user name or password (user:pass@host) are not allowed; "
            "use a URL that needs no credentials"
        )
    host = parts.hostname or ""
    if not host:
        raise FetchError(f"{refusing}: the URL has no host; give a full http(s) URL")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise FetchError(f"{refusing}: {host!r} is not a valid host name") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(
        url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path
    )


def _resolve(
    target: _Target, policy: FetchPolicy, deadline: _Deadline, refusing: str
) -> list[tuple[int, tuple]]:
    """The host's addresses, all checked against the policy: one bad address refuses the whole host."""
    answer: list[list[tuple]] = []
    failure: list[BaseException] = []

    def lookup() -> None:  # in a thread, since getaddrinfo has no timeout of its own
        try:
            answer.append(
                socket.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            )
        except Exception as e:
            failure.append(e)

    worker = threading.Thread(target=lookup, name="facecast-fetch-dns", daemon=True)
    worker.start()
    worker.join(deadline.remaining())
    if worker.is_alive():
        raise deadline.error()
    if failure or not answer:
        reason = failure[0] if failure else "no answer"
        raise FetchError(
            f"{refusing}: cannot resolve host {target.host!r} ({reason}); check the URL"
        ) from None
    addresses: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in answer[0]:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise FetchError(
                f"{refusing}: {target.host!r} resolved to {sockaddr[0]!r}, not an IP address"
            ) from None
        if not _is_allowed(ip, policy):
            kind = _address_kind(ip)
            if kind is not None:
                subject = (
                    target.host if _is_literal(target.host) else f"{target.host} resolves to {ip}, which"
                )
                raise FetchError(f"{refusing}: {subject} is {kind}; {_ALLOW_HINT}")
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    if not addresses:
        raise FetchError(f"{refusing}: {target.host!r} has no IPv4 or IPv6 address; check the URL")
    return addresses


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _get(
    target: _Target, addresses: list[tuple[int, tuple]], policy: FetchPolicy, deadline: _Deadline
) -> _Reply:
    """One GET to a checked address: a redirect, an error status, or a 2xx image body within the limits."""
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target, addresses, deadline)
    response: http.client.HTTPResponse | None = None
    try:
        conn.request(
            "GET",
            target.path,
            headers={
                "User-Agent": f"facecast/{__version__}",
                "Accept": ", ".join(IMAGE_MEDIA_TYPES),
                "Connection": "close",
            },
        )
        sock = conn.sock
        if sock is not None:
            sock.settimeout(deadline.remaining())
        response = conn.getresponse()
        status, reason = response.status, response.reason
        if status in REDIRECT_STATUSES:
            return _Reply(status, reason, location=response.getheader("Location"))
        if not 200 <= status < 300:
            return _Reply(status, reason)
        raw_type = response.getheader("Content-Type")
        media_type = (raw_type or "").split(";", 1)[0].strip().lower()
        if media_type not in _ACCEPTED_CONTENT_TYPES:
            shown = media_type or "no Content-Type"
            raise FetchError(
                f"{target.url}: the URL returned {shown}, not an image; "
                "give the address of the image itself (PNG, JPEG or WebP)"
            )
        if response.length is not None and response.length > policy.max_bytes:
            raise _too_big(target.url, policy, f"{response.length} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            if sock is not None:
                sock.settimeout(deadline.remaining())
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise _too_big(target.url, policy, f"over {policy.max_bytes} bytes")
            chunks.append(chunk)
        if deadline.expired():  # the watchdog's shutdown reads as the end of the body
            raise deadline.error()
        return _Reply(status, reason, data=b"".join(chunks))
    except FetchError:
        raise
    except ssl.SSLCertVerificationError as e:
        if deadline.expired():
            raise deadline.error() from None
        raise FetchError(
            f"{target.url}: the TLS certificate of {target.host} does not verify ({e.verify_message}); "
            "use a host with a valid certificate"
        ) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        if deadline.expired() or isinstance(e, TimeoutError):
            raise deadline.error() from None
        raise FetchError(f"{target.url}: {_describe(e, target)}") from None
    finally:
        deadline.release()
        if response is not None:
            response.close()
        conn.close()


def _describe(e: BaseException, target: _Target) -> str:
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {target.host}:{target.port}; check the URL and that the server is up"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection closed before the whole body arrived; try again"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without a response; try again"
    if isinstance(e, http.client.HTTPException):
        return f"not a valid HTTP response ({type(e).__name__}: {e}); check the URL"
    if isinstance(e, ssl.SSLError):
        return f"the TLS connection failed ({e}); check that the URL should be https"
    return f"the fetch failed ({e}); check the URL and try again"


def _too_big(url: str, policy: FetchPolicy, size: str) -> FetchError:
    return FetchError(
        f"{url}: the image is too big ({size}); the limit is {policy.max_bytes} bytes "
        f"({MAX_BYTES_ENV}) — use a smaller image"
    )


def fetch_image(url: str, policy: FetchPolicy = FetchPolicy()) -> FetchedImage:
    """A PNG, JPEG or WebP from an http(s) URL given by an untrusted user (SSRF-safe; see the module doc)."""
    deadline = _Deadline(url, policy.timeout_s)
    current, previous = url, None
    redirects = 0
    while True:
        refusing = (
            f"refusing to fetch {current}"
            if previous is None
            else f"refusing to follow the redirect from {previous} to {current}"
        )
        target = _parse_target(current, refusing)
        addresses = _resolve(target, policy, deadline, refusing)
        reply = _get(target, addresses, policy, deadline)
        if reply.status in REDIRECT_STATUSES:
            if not reply.location:
                raise FetchError(f"{current}: HTTP {reply.status} redirect without a Location; check the URL")
            if redirects >= policy.max_redirects:
                raise FetchError(
                    f"{url}: too many redirects (more than {policy.max_redirects}); "
                    "give the final address of the image"
                )
            redirects += 1
            previous, current = current, urljoin(current, reply.location.strip())
            continue
        if not 200 <= reply.status < 300:
            raise FetchError(
                f"{current}: the URL returned HTTP {reply.status} {reply.reason}".rstrip()
                + "; check that the URL is right and publicly readable"
            )
        return FetchedImage(
            data=reply.data, media_type=check_image_bytes(reply.data, current), source=current
        )
