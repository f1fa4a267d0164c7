"""Hostile input, deterministically: a few hundred mutations of real-looking photos through the one
decode path, and a few hundred malformed HTTP requests to a running app. Every photo ends decoded or
as an `ImageDecodeError`, each within a bounded time; every request gets an answer below 500 (or the
connection closed on a broken request line), and the app keeps serving."""

from __future__ import annotations

import io
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pytest
from PIL import Image

from animals10.card import Preprocessing
from animals10.imaging import ImageDecodeError, load_array
from tests.test_serve import photo_jpeg, server  # noqa: F401 - the module's running app

DECODE_TIMEOUT_S = 20  # a bound per file, far above the milliseconds a small photo takes
MUTATIONS_PER_SEED = 24
WAIT_FOR_ANSWER_S = 3  # a request that declared more body than it sent gets no answer: the server waits
PREPROCESSING = (Preprocessing(32), Preprocessing(32, interpolation="bicubic", crop_fraction=0.875))


def seed_files() -> dict[str, bytes]:
    """Small real photos from scikit-image in every format the decoders see."""
    from skimage import data

    photo = Image.fromarray(data.chelsea()).resize((72, 48))
    files = {}

    def save(name: str, image: Image.Image, fmt: str, **options) -> None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        files[name] = buffer.getvalue()

    save("baseline.jpg", photo, "JPEG", quality=85)
    save("progressive.jpg", photo, "JPEG", quality=85, progressive=True)
    save("rgb.png", photo, "PNG")
    save("palette.png", photo.convert("P"), "PNG")
    save("rgba.png", photo.convert("RGBA"), "PNG")
    save("lossy.webp", photo, "WEBP", quality=80)
    save("lossless.webp", photo, "WEBP", lossless=True)
    second = photo.transpose(Image.FLIP_LEFT_RIGHT)
    save("animated.gif", photo.convert("P"), "GIF", save_all=True, append_images=[second.convert("P")])
    save("rgb.bmp", photo, "BMP")
    return files


def mutations(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    """Deterministic damage: bit flips, cut points, header edits, spliced and repeated bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(MUTATIONS_PER_SEED):
        raw = bytearray(data)
        kind = ("bit_flips", "cut", "header", "header_size", "splice", "repeat")[i % 6]
        if kind == "bit_flips":
            for position in rng.integers(0, len(raw), int(rng.integers(1, 9))):
                raw[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == "cut":
            raw = raw[: int(rng.integers(1, len(raw)))]
        elif kind == "header":  # the first bytes carry magic numbers, sizes and chunk lengths
            for position in rng.integers(0, min(64, len(raw)), int(rng.integers(1, 5))):
                raw[position] = int(rng.integers(0, 256))
        elif kind == "header_size":  # 0x00 or 0xff runs where the dimensions usually sit
            start = int(rng.integers(0, min(32, len(raw) - 4)))
            raw[start : start + 4] = bytes([0xFF if rng.random() < 0.5 else 0x00] * 4)
        elif kind == "splice":
            start = int(rng.integers(0, len(raw)))
            raw[start:start] = rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
        else:
            start = int(rng.integers(0, len(raw) // 2))
            raw = raw[:start] + raw[start:] * 2
        out.append((f"{kind}#{i}", bytes(raw)))
    return out


def test_mutated_photos_end_decoded_or_as_an_image_decode_error():
    cases = [
        (f"{name}/{label}", data, preprocessing)
        for index, (name, seed_data) in enumerate(seed_files().items())
        for label, data in [("original", seed_data), *mutations(seed_data, index)]
        for preprocessing in PREPROCESSING
    ]
    assert len(cases) >= 400
    outcomes = {"decoded": 0, "refused": 0}
    escaped = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for label, data, preprocessing in cases:
            future = pool.submit(load_array, data, preprocessing)
            try:
                array = future.result(timeout=DECODE_TIMEOUT_S)
            except ImageDecodeError:
                outcomes["refused"] += 1
                continue
            except FutureTimeout:
                pytest.fail(f"{label}: still decoding after {DECODE_TIMEOUT_S} s")
            except Exception as error:  # noqa: BLE001 - what the test looks for
                escaped.append(f"{label}: {type(error).__name__}: {error}")
                continue
            size = preprocessing.image_size
            assert array.shape == (size, size, 3) and array.dtype == np.uint8, label
            outcomes["decoded"] += 1
    assert not escaped, "\n".join(escaped)
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0  # the mutations both survive and break files


# --- malformed HTTP requests ----------------------------------------------------------------------


def send_raw(port: int, request: bytes) -> int | None:
    """Sends the bytes and returns the answer's status. None: the server closed the connection, or is
    still waiting for the rest of a body the request declared and never sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server answered and closed early; its answer is still readable
        sock.settimeout(WAIT_FOR_ANSWER_S)
        received = b""
        try:
            while b"\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    line = received.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else None


def malformed_requests() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    photo = photo_jpeg(11)
    noise = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()

    def request(method="POST", path="/predict", headers=(), body=b"", length=True, version="HTTP/1.1") -> bytes:
        lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *headers]
        if length:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    cases = []
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "get"):
        for path in ("/predict", "/model", "/healthz", "/", "/nothing", "/predict?x=1&x=2", "//predict"):
            body = b"" if method in ("GET", "HEAD") else noise
            cases.append((f"{method} {path}", request(method, path, body=body)))
    bodies = {"noise": noise, "truncated photo": photo[: len(photo) // 3], "empty": b"", "photo": photo}
    content_types = [
        "image/jpeg", "image/", "image/png; charset=utf-8", "text/plain", "application/json", "", "image/jpeg;;;",
        "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "b" * 300,
        "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded", "\x00\x01",
    ]  # fmt: skip
    for content_type in content_types:
        for name, body in bodies.items():
            headers = [f"Content-Type: {content_type}"]
            cases.append((f"{content_type!r} {name}", request(headers=headers, body=body)))
    boundary = "abc123"
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n".encode()
        + photo + f"\r\n--{boundary}--\r\n".encode(),  # well formed
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n".encode()
        + photo,  # never closed
        f"--{boundary}\r\n\r\n".encode() + noise + f"\r\n--{boundary}--\r\n".encode(),  # no disposition
        b"--wrong\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nx\r\n--wrong--\r\n",
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{'x' * 5000}\"\r\n\r\n".encode()
        + b"x" + f"\r\n--{boundary}--\r\n".encode(),
        f"--{boundary}--\r\n".encode(),  # no parts
        noise,
    ]  # fmt: skip
    for i, body in enumerate(parts):
        for content_type in (
            f"multipart/form-data; boundary={boundary}",
            f'multipart/form-data; boundary="{boundary}"',
        ):
            cases.append((f"multipart #{i}", request(headers=[f"Content-Type: {content_type}"], body=body)))
    jpeg = ["Content-Type: image/jpeg"]
    for value in ("-1", "abc", "99999999999999999999", "10", "0", " 5", "5, 5", "1e3"):
        raw = request(headers=[*jpeg, f"Content-Length: {value}"], body=photo, length=False)
        cases.append((f"Content-Length {value!r}", raw))
    raw = request(headers=[*jpeg, "Content-Length: 10", "Content-Length: 20"], body=photo, length=False)
    cases.append(("two lengths", raw))
    chunked = [*jpeg, "Transfer-Encoding: chunked"]
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc", b"ffffffffffffffffff\r\n", b"0\r\n\r\n", b"3\r\nabc\r\n"):
        cases.append((f"chunked {body[:12]!r}", request(headers=chunked, body=body, length=False)))
    raw = request(headers=[*chunked, "Content-Length: 3"], body=b"3\r\nabc\r\n0\r\n\r\n", length=False)
    cases.append(("chunked and length", raw))
    odd_headers = ("NoColonHere", ": empty name", "X-Long: " + "a" * 20000, "Content-Type : image/jpeg", "X\x00: y")
    for header in (*odd_headers, "Authorization: Bearer"):
        cases.append((f"header {header[:20]!r}", request(headers=[*jpeg, header], body=photo)))
    for line in (b"POST /predict\r\n\r\n", b"POST\r\n\r\n", b"\r\n\r\n", b"POST /predict HTTP/9.9\r\n\r\n"):
        cases.append((f"request line {line[:16]!r}", line))
    cases.append(("noise for a request line", noise[:300]))
    cases.append(("HTTP/1.0", request(headers=jpeg, body=photo, version="HTTP/1.0")))
    for i in range(150):  # random bytes flipped in a good request
        good = bytearray(request(headers=jpeg, body=photo))
        for position in rng.integers(0, 120, int(rng.integers(1, 4))):
            good[position] = int(rng.integers(0, 256))
        cases.append((f"flipped request #{i}", bytes(good)))
    return cases


def test_malformed_requests_never_get_a_5xx_and_the_app_keeps_serving(server):  # noqa: F811
    port = server.base_url.port
    cases = malformed_requests()
    assert len(cases) >= 300
    statuses, server_errors = {}, []
    for label, raw in cases:
        status = send_raw(port, raw)
        statuses[status] = statuses.get(status, 0) + 1
        if status is not None and status >= 500:
            server_errors.append(f"{label}: {status}")
    assert not server_errors, "\n".join(server_errors)
    assert statuses.get(200, 0) > 0 and sum(n for s, n in statuses.items() if s and 400 <= s < 500) > 100
    response = server.post("/predict", content=photo_jpeg(12), headers={"content-type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["predictions"][0]["label"]
    assert server.get("/healthz").status_code == 200
