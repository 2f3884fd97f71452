"""One ECS task, as a real process: an HTTP server on its own loopback address that answers `/` with its
version and `/health` with 200. Run as `python task.py IP PORT VERSION`."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    version_label = "unknown"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = (b"ok\n" if self.path.startswith("/health") else f"{self.version_label}\n".encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def main():
    ip, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.version_label = version
    server = ThreadingHTTPServer((ip, port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
