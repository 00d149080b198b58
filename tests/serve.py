#!/usr/bin/env python3
"""Static file server for dist/ (tests and `./build.sh serve`).

    python tests/serve.py DIR [PORT]      # PORT 0 or absent: 8000, else the first free one

As a module: start_server(directory, port=0) -> (server, url), serving in a
daemon thread; call server.shutdown() when done.
"""
import functools
import http.server
import socket
import sys
import threading

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".whl": "application/octet-stream",
    ".zip": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".gguf": "application/octet-stream",
    ".apr": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):  # quiet
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(directory, port=0, host="127.0.0.1", handler=Handler):
    return Server((host, port), functools.partial(handler, directory=str(directory)))


def start_server(directory, port=0, host="127.0.0.1", handler=Handler):
    """Serve `directory` in a daemon thread; returns (server, base_url ending in '/').
    handler: a Handler subclass (tests that slow or change some answers)."""
    server = make_server(directory, port, host, handler)
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}/"


def _first_free(host, start):
    for p in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, p))
                return p
            except OSError:
                continue
    return 0


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: serve.py DIR [PORT]\n")
        return 2
    host = "127.0.0.1"
    port = int(argv[2]) if len(argv) == 3 else 0
    if port == 0:
        port = _first_free(host, 8000)
    try:
        server = make_server(argv[1], port, host)
    except OSError as e:
        sys.stderr.write(f"serve.py: cannot listen on {host}:{port}: {e}\n")
        return 1
    h, p = server.server_address[:2]
    print(f"Serving {argv[1]} at http://{h}:{p}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
