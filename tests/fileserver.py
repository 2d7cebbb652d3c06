"""A threaded HTTP file server on 127.0.0.1 for download tests, with the failures real hosts show."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        srv = self.server
        asked = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, asked))
            codes = srv.fail.get(self.path)
            code = codes.pop(0) if codes else None
            cut = srv.cut.pop(self.path, None)
        if code is not None:
            self.send_error(code)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if asked and self.path not in srv.no_range:
            start = int(asked.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:  # announce the whole body, send part of it, hang up
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes). ``no_range``: paths served whole whatever the Range header;
    ``cut``: path -> bytes sent before hanging up (once); ``fail``: path -> status codes answered first.
    ``requests`` logs (path, Range header) of every GET."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.no_range: set[str] = set()
        self.cut: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
