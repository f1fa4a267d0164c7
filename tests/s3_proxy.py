"""An HTTP proxy on 127.0.0.1 in front of the loopback S3 server, for tests that need S3 to misbehave.

`before(method, path)` runs for every request before it is forwarded: it may wait (hold a listing
page back, say) and may return (status, XML body) to answer with instead of forwarding (a 503, say).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

Answer = tuple[int, bytes]


class S3Proxy:
    def __init__(self, upstream: str, before: Callable[[str, str], Answer | None]):
        target = urlparse(upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(
                self, status: int, headers: list[tuple[str, str]], payload: bytes, length: str | None = None
            ) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self):
                body = self._body()
                answer = before(self.command, self.path)
                if answer is not None:
                    self._answer(answer[0], [("Content-Type", "application/xml")], answer[1])
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")
                }
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                connection.request(
                    self.command, self.path, body=body, headers={**headers, "Content-Length": str(len(body))}
                )
                response = connection.getresponse()
                payload = response.read()
                # A HEAD answer has no body but tells the object's size.
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" else None
                self._answer(response.status, response.getheaders(), payload, length)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
