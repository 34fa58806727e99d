"""Client CPU per small file GET through the transfer code (issue 14 item 3).

A server in a child process (HTTP/1.1 with keep-alive, or HTTP/1.0 with ``--close``) serves
one object of ``--size`` bytes from memory; this process fetches it ``--files`` times with
:func:`artifactfs.http.download` into a temp file, from ``--threads`` threads (the fetcher's
limiter), and prints the CPU seconds of this process (user + system, all threads) over the
files fetched.  The server's CPU is not counted: it runs in its own process.  The median of
``--runs`` runs is printed with min-max.

``--many``: the same GETs through :func:`artifactfs.transfer.get_many` (the fetch engine's
batches: libcurl's multi, ``--threads`` requests in flight on one thread, bodies in memory),
after the threaded path, in the same run.

Run: ``PYTHONPATH=. .venv/bin/python scripts/bench_transfer.py [--files N] [--size BYTES] [--many]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"x" * int(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = sys.argv[2]
    wbufsize = 1 << 16  # headers and body in one write
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"abc"')
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def run(url: str, files: int, size: int, threads: int) -> tuple[float, float]:
    from artifactfs.http import download

    todo = list(range(files))
    lock = threading.Lock()

    def worker() -> None:
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                os.ftruncate(fd, 0)
                download(url, fd, size, "bench")
        finally:
            os.close(fd)

    t0, c0 = time.monotonic(), time.process_time()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return time.process_time() - c0, time.monotonic() - t0


def run_many(url: str, files: int, size: int, threads: int) -> tuple[float, float]:
    from artifactfs import transfer

    pool = transfer.HttpPool()
    t0, c0 = time.monotonic(), time.process_time()
    for got in transfer.get_many([(url, size)] * files, pool=pool, concurrency=threads):
        assert got.body is not None, got.problem
    return time.process_time() - c0, time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--close", action="store_true", help="HTTP/1.0: a new connection per GET")
    parser.add_argument("--many", action="store_true", help="also transfer.get_many (the engine's batches)")
    args = parser.parse_args()
    proto = "HTTP/1.0" if args.close else "HTTP/1.1"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.size), proto], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/blob?sig=x"
        ways = [("http.download in threads", run)]
        if args.many:
            ways.append(("transfer.get_many, one thread", run_many))
        for name, way in ways:
            way(url, 50, args.size, args.threads)  # warm: imports, connections
            cpu, wall = [], []
            for _ in range(args.runs):
                c, w = way(url, args.files, args.size, args.threads)
                cpu.append(c * 1000 / args.files)
                wall.append(w)
            print(
                f"{name}: {args.files} GETs of {args.size} B ({proto}, {args.threads} at once): client CPU "
                f"{statistics.median(cpu):.3f} ms/file ({min(cpu):.3f}-{max(cpu):.3f}), "
                f"wall {statistics.median(wall):.2f} s; load {os.getloadavg()[0]:.1f}"
            )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
