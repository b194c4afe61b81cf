"""One way to run a test HTTP server: on 127.0.0.1, an ephemeral port, stopped on exit."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def serve_handler(handler: Callable[..., http.server.BaseHTTPRequestHandler], path: str = "",
                  **attrs: Any) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1; `attrs` are set on the server (handlers read them as
    `self.server.<name>`). Yields the base URL with `path` appended."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attrs.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path}"
    finally:
        server.shutdown()
        server.server_close()
