"""nginx from Debian serving blob files from disk on 127.0.0.1, for the benchmarks' W&B cases
(``scripts/bench.py`` and ``scripts/bench_wandb.py`` both start one): a real static server, so the
pure-Python W&B test server answers only GraphQL."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

NGINX_CONF = """
daemon off; master_process off; worker_processes 1;
pid {work}/nginx.pid; error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
    server {{ listen 127.0.0.1:{port}; root {root}; location /files/ {{ }} }}
}}
"""


class Nginx:
    """nginx from Debian serving blob files from disk on 127.0.0.1 (started and stopped here):
    a real static server, so the W&B test server (pure Python) only answers GraphQL and the
    transfer figures are the mount's, not the test server's."""

    def __init__(self, work: Path) -> None:
        self.work = work / "nginx"
        self.root = self.work / "www"
        (self.work / "tmp").mkdir(parents=True)
        self.root.mkdir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.work, port=port, root=self.root))
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.work)])
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {(self.work / 'nginx-error.log').read_text()}") from None
                time.sleep(0.05)

    def put(self, rec: Any) -> None:
        """Every file of an artifact record under ``/files/<hex>/<path>``, as the server names them."""
        from artifactfs.manifest import hex_from_b64

        for path, data in rec.files.items():
            target = self.root / "files" / hex_from_b64(rec.file_digests[path]) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
