"""A WAN in user space: a TCP proxy on 127.0.0.1 that delays requests and caps each connection's rate.

``scripts/bench_wandb.py --wan LAT_MS,MBPS`` puts one in front of the W&B test server and one in
front of nginx (this kernel has no ``sch_netem``).  For each upstream it listens on a port of its
own and, for every client connection:

* **latency**: the connection is opened to the upstream ``LAT_MS`` after the client connected
  (a TCP handshake costs a round trip), and every byte the client sends reaches the upstream
  ``LAT_MS`` after it arrived, in order (a request, pipelined or not, waits one round trip);
  answers are not delayed again, so a request/answer pair costs one ``LAT_MS`` round trip plus
  the transfer;
* **rate**: the bytes from the upstream are paced to ``MBPS`` (10^6 bytes per second) on that
  connection alone, as object stores cap a single stream; a client that opens N connections
  gets N times the rate, as it would from S3 or GCS.

It is protocol-blind (HTTP/1.1 keep-alive, ranges, GraphQL posts all pass as bytes), so it is
honest about per-request and per-connection costs without parsing anything.  It runs in its own
process so that its CPU does not share the GIL of the server in the bench.

Run: ``python scripts/wan_proxy.py --latency-ms 30 --mbps 100 HOST:PORT [HOST:PORT ...]``: it
prints one line ``ports P1 P2 ...`` (the listening ports, in the order of the upstreams) once
it listens, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

CHUNK = 64 * 1024


class Link:
    def __init__(self, latency: float, rate: float) -> None:
        self.latency = latency
        self.rate = rate  # bytes per second, per connection

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        accepted = time.monotonic()

        async def inbound() -> None:  # client -> queue, stamped at arrival
            try:
                while True:
                    data = await reader.read(CHUNK)
                    await queue.put((time.monotonic(), data))
                    if not data:
                        return
            except (ConnectionError, OSError):
                await queue.put((time.monotonic(), b""))

        feeder = asyncio.create_task(inbound())
        up_writer: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(max(0.0, accepted + self.latency - time.monotonic()))
            up_reader, up_writer = await asyncio.open_connection(host, port)

            async def upstream() -> None:  # queue -> upstream, each chunk LAT after it arrived
                assert up_writer is not None
                while True:
                    stamp, data = await queue.get()
                    wait = stamp + self.latency - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        if up_writer.can_write_eof():
                            up_writer.write_eof()
                        return
                    up_writer.write(data)
                    await up_writer.drain()

            async def downstream() -> None:  # upstream -> client, paced to the rate
                allowed = time.monotonic()
                while True:
                    data = await up_reader.read(CHUNK)
                    if not data:
                        return
                    now = time.monotonic()
                    allowed = max(allowed, now) + len(data) / self.rate
                    writer.write(data)
                    await writer.drain()
                    wait = allowed - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)

            up = asyncio.create_task(upstream())
            try:
                await downstream()
            finally:
                up.cancel()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            feeder.cancel()
            for w in (writer, up_writer):
                if w is not None:
                    w.close()


async def serve(upstreams: list[tuple[str, int]], latency: float, rate: float) -> None:
    link = Link(latency, rate)
    servers = []
    for host, port in upstreams:

        def handler(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, h: str = host, p: int = port
        ) -> asyncio.Task[None]:
            return asyncio.ensure_future(link.client(r, w, h, p))

        servers.append(await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("ports " + " ".join(str(p) for p in ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--mbps", type=float, default=100.0, help="per-connection cap, 10^6 bytes/s")
    parser.add_argument("upstream", nargs="+", help="HOST:PORT")
    args = parser.parse_args()
    ups = []
    for text in args.upstream:
        host, _, port = text.rpartition(":")
        ups.append((host or "127.0.0.1", int(port)))
    try:
        asyncio.run(serve(ups, args.latency_ms / 1000.0, args.mbps * 1e6))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
