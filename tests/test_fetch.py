"""facecast.avatars.fetch: the SSRF-safe image fetch, against a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np
import pytest

from facecast import __version__
from facecast.avatars.fetch import (
    IMAGE_MEDIA_TYPES,
    FetchedImage,
    FetchError,
    FetchPolicy,
    check_image_bytes,
    decode_image,
    fetch_image,
    is_public_address,
    load_image_source,
    read_image_file,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
MAX_BYTES = 64 * 1024


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
PNG = _encode(".png", PHOTO)
JPEG = _encode(".jpg", PHOTO)
WEBP_LOSSY = _encode(".webp", PHOTO, [cv2.IMWRITE_WEBP_QUALITY, 80])
WEBP_LOSSLESS = _encode(".webp", PHOTO, [cv2.IMWRITE_WEBP_QUALITY, 101])
BOMB = _png_header(100_000, 100_000) + _chunk(b"IEND", b"")
GARBAGE_PNG = _png_header(32, 24) + b"\x00garbage, not zlib data" * 20
HTML = b"<!doctype html><html><body>not an image</body></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stop: threading.Event
    requests: list[tuple[str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str | None = None,
        length: int | None = -1,
        **headers: str,
    ) -> None:
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(len(body) if length == -1 else length))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client hung up, as a client refusing a body does
            self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, Location=location)

    def _trickle(self) -> None:
        """One byte every 20 ms for at most 3 s, until the client hangs up or the fixture stops."""
        for _ in range(150):
            if self.server.stop.wait(0.02):
                return
            try:
                self.wfile.write(b"\x00")
                self.wfile.flush()
            except OSError:
                return

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.server.requests.append((path, dict(self.headers)))
        if path == "/x.png":
            self._send(200, PNG, "image/png")
        elif path == "/x.jpg":
            self._send(200, JPEG, "image/jpeg; charset=binary")
        elif path == "/x.webp":
            self._send(200, WEBP_LOSSY, "image/webp")
        elif path == "/octet":
            self._send(200, PNG, "application/octet-stream")
        elif path == "/no-type":
            self._send(200, PNG)
        elif path == "/page.html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif path == "/html-as-png":
            self._send(200, HTML, "image/png")
        elif path == "/huge":
            self._send(200, PNG + b"\x00" * (4 * MAX_BYTES), "image/png")
        elif path == "/huge-no-length":
            self._send(200, PNG + b"\x00" * (4 * MAX_BYTES), "image/png", length=None)
        elif path == "/huge-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(8):
                    block = b"\x00" * MAX_BYTES
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif path == "/lying-length":  # claims 100 bytes, sends far more than the limit
            self._send(200, PNG[:60] + b"\x00" * (4 * MAX_BYTES), "image/png", length=100)
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.flush()
            self._trickle()
        elif path == "/slow-start":
            if not self.server.stop.wait(1.5):
                self._send(200, PNG, "image/png")
        elif path == "/missing":
            self._send(404, b"no such thing", "text/plain")
        elif path == "/bomb.png":
            self._send(200, BOMB, "image/png")
        elif path == "/garbage.png":
            self._send(200, GARBAGE_PNG, "image/png")
        elif path == "/r1":
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1]}/r2", 301)
        elif path == "/r2":
            self._redirect("r3", 307)  # relative
        elif path == "/r3":
            self._redirect("/x.png", 308)
        elif path.startswith("/loop/"):
            self._redirect(f"/loop/{int(path.rsplit('/', 1)[1]) + 1}")
        elif path == "/no-location":
            self._send(302)
        elif path == "/to":
            self._redirect(query["u"][0])
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.stop = threading.Event()
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every address a socket in this process connects to (the real connect still runs)."""
    seen: list[tuple[Any, ...]] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: tuple[Any, ...]) -> None:
        seen.append(address)
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


LOCAL = FetchPolicy(max_bytes=MAX_BYTES, timeout_s=5.0, allow_networks=LOOPBACK)


# ----------------------------------------------------------------------------------- refused by default


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:{port}/x.png", "loopback"),
        ("http://localhost:{port}/x.png", "loopback"),
        ("http://[::1]:{port}/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://2130706433/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::ffff:127.0.0.1]/", "loopback address in IPv4-mapped form"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00::1]/", "private"),
        ("https://10.0.0.1/x.png", "private"),
    ],
)
def test_default_policy_refuses_non_public_addresses(
    url: str, kind: str, server: _Server, connects: list[tuple[Any, ...]]
) -> None:
    url = url.format(port=server.server_address[1])
    with pytest.raises(FetchError) as info:
        fetch_image(url)
    message = str(info.value)
    assert message.startswith(f"refusing to fetch {url}: ")
    assert kind in message
    assert "FACECAST_FETCH_ALLOW_NETWORKS" in message
    assert connects == []


def test_refusal_message_names_the_address(connects: list[tuple[Any, ...]]) -> None:
    with pytest.raises(FetchError) as info:
        fetch_image("http://127.0.0.1:9/x.png")
    assert str(info.value) == (
        "refusing to fetch http://127.0.0.1:9/x.png: 127.0.0.1 is a loopback address; only public "
        "addresses are allowed (set FACECAST_FETCH_ALLOW_NETWORKS to allow a private range)"
    )
    with pytest.raises(FetchError, match=r"localhost resolves to 127\.0\.0\.1, which is a loopback address"):
        fetch_image("http://localhost:9/x.png")
    assert connects == []


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file:///etc/passwd", "file: URLs are not supported"),
        ("ftp://example.com/x.png", "ftp: URLs are not supported"),
        ("data:image/png;base64,iVBORw0KGgo=", "data: URLs are not supported"),
        ("gopher://example.com/", "gopher: URLs are not supported"),
        ("//example.com/x.png", "without a scheme"),
        ("http://user:pass@example.com/x.png", "user name or password"),
        ("http://user@example.com/x.png", "user name or password"),
        ("http:///x.png", "no host"),
        ("http://example.com:99999/x.png", "not a valid URL"),
        ("http://example.com/a b.png", "spaces or control characters"),
        ("http://example.com/x.png\r\nX-Evil: 1", "spaces or control characters"),
    ],
)
def test_refuses_bad_urls_without_connecting(url: str, needle: str, connects: list[tuple[Any, ...]]) -> None:
    with pytest.raises(FetchError, match=needle):
        fetch_image(url, LOCAL)
    assert connects == []


# ------------------------------------------------------------------------------------ allowed loopback


@pytest.mark.parametrize(
    ("path", "data", "media_type"),
    [
        ("/x.png", PNG, "image/png"),
        ("/x.jpg", JPEG, "image/jpeg"),
        ("/x.webp", WEBP_LOSSY, "image/webp"),
        ("/octet", PNG, "image/png"),
    ],
)
def test_fetches_images_from_an_allowed_network(path: str, data: bytes, media_type: str, base: str) -> None:
    image = fetch_image(base + path, LOCAL)
    assert image == FetchedImage(data=data, media_type=media_type, source=base + path)
    assert image.media_type in IMAGE_MEDIA_TYPES


def test_sends_identifying_headers(base: str, server: _Server) -> None:
    fetch_image(base + "/x.png?v=1", LOCAL)
    path, headers = server.requests[-1]
    assert path == "/x.png"
    assert headers["User-Agent"] == f"facecast/{__version__}"
    assert headers["Accept"] == "image/png, image/jpeg, image/webp"
    assert headers["Host"] == f"127.0.0.1:{server.server_address[1]}"
    assert "Cookie" not in headers


def test_connects_to_the_checked_address(base: str, connects: list[tuple[Any, ...]]) -> None:
    fetch_image(base + "/x.png", LOCAL)
    assert connects == [("127.0.0.1", int(base.rsplit(":", 1)[1]))]


def test_follows_a_redirect_chain_within_the_allowed_network(base: str, server: _Server) -> None:
    image = fetch_image(base + "/r1", LOCAL)
    assert image.data == PNG
    assert image.source == base + "/x.png"
    assert [p for p, _ in server.requests[-4:]] == ["/r1", "/r2", "/r3", "/x.png"]
    target = quote(base + "/x.png", safe="")
    assert fetch_image(f"{base}/to?u={target}", LOCAL).data == PNG


def test_redirect_chain_longer_than_the_policy_is_refused(base: str) -> None:
    with pytest.raises(FetchError, match=r"too many redirects \(more than 3\)"):
        fetch_image(base + "/loop/0", LOCAL)
    two = FetchPolicy(max_bytes=MAX_BYTES, max_redirects=2, allow_networks=LOOPBACK)
    with pytest.raises(FetchError, match=r"too many redirects \(more than 2\)"):
        fetch_image(base + "/r1", two)
    with pytest.raises(FetchError, match="redirect without a Location"):
        fetch_image(base + "/no-location", LOCAL)


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::1]:{port}/x.png", "::1 is a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "private address in IPv4-mapped form"),
        ("http://2852039166/", "link-local"),  # 169.254.169.254 as one decimal number
        ("file:///etc/passwd", "file: URLs are not supported"),
        ("gopher://127.0.0.1:{port}/", "gopher: URLs are not supported"),
        ("http://user:pw@127.0.0.1:{port}/x.png", "user name or password"),
    ],
)
def test_redirects_out_of_the_allowed_network_are_refused(
    target: str, needle: str, base: str, server: _Server, connects: list[tuple[Any, ...]]
) -> None:
    target = target.format(port=server.server_address[1])
    start = f"{base}/to?u={quote(target, safe='')}"
    with pytest.raises(FetchError) as info:
        fetch_image(start, LOCAL)
    message = str(info.value)
    assert message.startswith(f"refusing to follow the redirect from {start} to {target}: ")
    assert needle in message
    assert all(address[0] == "127.0.0.1" for address in connects)
    assert len(connects) == 1


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/page.html", "the URL returned text/html, not an image"),
        ("/no-type", "returned no Content-Type, not an image"),
        ("/html-as-png", "not a PNG, JPEG or WebP image (it looks like an HTML or XML page)"),
        ("/missing", "returned HTTP 404 Not Found"),
        ("/nowhere", "returned HTTP 404"),
        ("/huge", f"too big ({4 * MAX_BYTES + len(PNG)} bytes); the limit is {MAX_BYTES} bytes"),
        ("/huge-no-length", f"too big (over {MAX_BYTES} bytes)"),
        ("/huge-chunked", f"too big (over {MAX_BYTES} bytes)"),
        ("/bomb.png", "100000×100000"),
        ("/garbage.png", "does not decode"),
    ],
)
def test_refuses_bad_responses(path: str, needle: str, base: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch_image(base + path, LOCAL)
    assert needle in str(info.value)


def test_lying_content_length_is_not_trusted(base: str) -> None:
    # The 100 bytes that Content-Length claims are all that is read; they are no image.
    with pytest.raises(FetchError, match=r"does not decode|not a PNG|truncated"):
        fetch_image(base + "/lying-length", LOCAL)
    # The byte count holds whatever the headers say: the rest of the body is never accepted.
    with pytest.raises(FetchError, match="too big"):
        fetch_image(base + "/huge-no-length", FetchPolicy(max_bytes=len(PNG) + 1, allow_networks=LOOPBACK))


@pytest.mark.parametrize("path", ["/slow-body", "/slow-start"])
def test_slow_server_runs_into_the_deadline(path: str, base: str) -> None:
    policy = FetchPolicy(max_bytes=MAX_BYTES, timeout_s=0.5, allow_networks=LOOPBACK)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"took longer than 0\.5 s"):
        fetch_image(base + path, policy)
    assert time.monotonic() - started < 1.4


def test_connection_refused_is_reported(connects: list[tuple[Any, ...]]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError, match="connection refused"):
        fetch_image(f"http://127.0.0.1:{port}/x.png", LOCAL)


# ------------------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("2002:808:808::1", True),
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("100.127.255.255", False),
        ("198.18.0.1", False),
        ("198.19.255.255", False),
        ("192.0.2.1", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::127.0.0.1", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::1", False),
        ("2002:7f00:1::1", False),
        ("2002:a00:1::1", False),
        ("2001::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# ------------------------------------------------------------------------------------------- images


def test_check_image_bytes_types_and_limits() -> None:
    assert check_image_bytes(PNG, "x") == "image/png"
    assert check_image_bytes(JPEG, "x") == "image/jpeg"
    assert check_image_bytes(WEBP_LOSSY, "x") == "image/webp"
    assert check_image_bytes(WEBP_LOSSLESS, "x") == "image/webp"
    with_alpha = np.dstack([PHOTO, np.full(PHOTO.shape[:2], 128, np.uint8)])
    extended = _encode(".webp", with_alpha, [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert extended[12:16] == b"VP8X"
    assert check_image_bytes(extended, "x") == "image/webp"
    with pytest.raises(FetchError, match="32×24; the limit is 100 pixels"):
        check_image_bytes(PNG, "x", max_pixels=100)
    for data, needle in [
        (b"", "empty"),
        (BOMB, "100000×100000"),
        (GARBAGE_PNG, "does not decode"),
        (PNG[:20], "PNG without an IHDR"),
        (JPEG[:2] + b"\x00", "not a PNG"),
        (JPEG[:3], "JPEG without a readable frame header"),
        (JPEG[:200], "JPEG without a readable frame header|does not decode"),
        (WEBP_LOSSY[:20], "WebP without a readable header"),
        (b"GIF89a" + b"\x00" * 20, "it is a GIF"),
        (HTML, "HTML"),
    ]:
        with pytest.raises(FetchError, match=needle):
            check_image_bytes(data, "x")


def test_webp_header_sizes_are_checked_before_decoding() -> None:
    huge = bytearray(WEBP_LOSSY)
    assert huge[12:16] == b"VP8 "
    huge[26:30] = struct.pack("<HH", 16000, 16000)
    with pytest.raises(FetchError, match="16000×16000"):
        check_image_bytes(bytes(huge), "x")


def test_decode_image_is_rgb() -> None:
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[1, 2] = (0, 0, 255)  # pure red in OpenCV's BGR order
    rgb = decode_image(_encode(".png", bgr))
    assert rgb.shape == (3, 5, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags["C_CONTIGUOUS"]
    assert rgb[1, 2].tolist() == [255, 0, 0]
    assert rgb[0, 0].tolist() == [0, 0, 0]
    with pytest.raises(FetchError, match=r"photo\.png: not a PNG"):
        decode_image(b"hello", "photo.png")


# -------------------------------------------------------------------------------------------- files


def test_read_image_file(tmp_path: Path) -> None:
    png = tmp_path / "face.png"
    png.write_bytes(PNG)
    image = read_image_file(png)
    assert image == FetchedImage(data=PNG, media_type="image/png", source=str(png))
    assert load_image_source(str(png)) == image
    with pytest.raises(FetchError, match="no such file"):
        read_image_file(tmp_path / "missing.png")
    with pytest.raises(FetchError, match="is a directory"):
        read_image_file(tmp_path)
    with pytest.raises(FetchError, match=f"the file is {len(PNG)} bytes; the limit is 100 bytes"):
        read_image_file(png, FetchPolicy(max_bytes=100))
    text = tmp_path / "notes.png"
    text.write_text("just some text")
    with pytest.raises(FetchError, match="not a PNG, JPEG or WebP image"):
        load_image_source(str(text))


@pytest.mark.parametrize(
    "source",
    ["file:///etc/passwd", "FILE:///etc/passwd", "ftp://example.com/x.png", "data:image/png;base64,AAAA"],
)
def test_load_image_source_refuses_other_schemes(source: str) -> None:
    with pytest.raises(FetchError, match="URLs are not supported"):
        load_image_source(source)


def test_load_image_source_fetches_urls(base: str) -> None:
    assert load_image_source(base + "/x.jpg", LOCAL).media_type == "image/jpeg"
    with pytest.raises(FetchError, match="loopback"):
        load_image_source(base + "/x.jpg")


# ------------------------------------------------------------------------------------------- policy


def test_policy_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACECAST_FETCH_ALLOW_NETWORKS", "FACECAST_FETCH_MAX_BYTES", "FACECAST_FETCH_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    assert FetchPolicy.from_env() == FetchPolicy()
    monkeypatch.setenv("FACECAST_FETCH_ALLOW_NETWORKS", "127.0.0.0/8, 10.0.0.0/8,,fd00::/8")
    monkeypatch.setenv("FACECAST_FETCH_MAX_BYTES", "1048576")
    monkeypatch.setenv("FACECAST_FETCH_TIMEOUT_S", "2.5")
    policy = FetchPolicy.from_env()
    assert policy.allow_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert (policy.max_bytes, policy.timeout_s, policy.max_redirects) == (1048576, 2.5, 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACECAST_FETCH_ALLOW_NETWORKS", "127.0.0.0/33"),
        ("FACECAST_FETCH_ALLOW_NETWORKS", "10.0.0.0/8,intranet"),
        ("FACECAST_FETCH_MAX_BYTES", "lots"),
        ("FACECAST_FETCH_MAX_BYTES", "-5"),
        ("FACECAST_FETCH_TIMEOUT_S", "soon"),
        ("FACECAST_FETCH_TIMEOUT_S", "0"),
        ("FACECAST_FETCH_TIMEOUT_S", "inf"),
    ],
)
def test_policy_from_env_rejects_bad_values(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        FetchPolicy.from_env()


def test_allow_networks_admit_only_their_ranges(base: str, server: _Server) -> None:
    ten = FetchPolicy(allow_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    with pytest.raises(FetchError, match="loopback"):
        fetch_image(base + "/x.png", ten)
    single = FetchPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    assert fetch_image(base + "/x.png", single).data == PNG


# ---------------------------------------------------------------------------------------------- https


def _tls_files(tmp: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `names` (IPs or DNS names): (ca.pem, cert, key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "facecast test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@contextlib.contextmanager
def _tls_server(cert: Path, key: Path) -> Iterator[str]:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.stop = threading.Event()
    srv.requests = []
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_https_verifies_the_certificate_against_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connects: list[tuple[Any, ...]]
) -> None:
    ca, cert, key = _tls_files(tmp_path, ["127.0.0.1"])
    with _tls_server(cert, key) as https:
        with pytest.raises(FetchError, match=r"TLS certificate of 127\.0\.0\.1 does not verify"):
            fetch_image(https + "/x.png", LOCAL)  # the test CA is not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        image = fetch_image(https + "/x.png", LOCAL)
        assert (image.data, image.media_type, image.source) == (PNG, "image/png", https + "/x.png")
        assert fetch_image(https + "/r3", LOCAL).source == https + "/x.png"
    assert {address[0] for address in connects} == {"127.0.0.1"}


def test_https_refuses_a_certificate_for_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _tls_files(tmp_path, ["images.example.com"])
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with (
        _tls_server(cert, key) as https,
        pytest.raises(FetchError, match=r"does not verify.*(mismatch|match)"),
    ):
        fetch_image(https + "/x.png", LOCAL)
