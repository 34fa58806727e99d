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
  gets N times the rate, as it would from S3 or GCS.  Since the bytes started flowing, a
  connection has never sent more than the rate allows (plus one read of ``CHUNK``); a wake-up
  that comes late (the event loop's timers have a millisecond's grain, and on a busy machine a
  sleeping process waits for a core) is caught up if it is less than ``BURST`` behind, and the
  count starts afresh after a longer gap (an idle connection saves up nothing).  When every
  late wake-up was lost instead, a connection got 31-51 MB/s of its 100 here, and less the
  busier the machine, so a client that used CPU while it read slowed its own link.

It is protocol-blind (HTTP/1.1 keep-alive, ranges, GraphQL posts all pass as bytes), so it is
honest about per-request and per-connection costs without parsing anything.  It runs in its own
process so that its CPU does not share the GIL of the server in the bench, and (as root) at a
higher priority (nice -10): it stands for a network, whose rate does not drop when the client's
machine is busy, and on a shared 2-core machine a proxy waiting for a core paced every link
below its rate.

Run: ``python scripts/wan_proxy.py --latency-ms 30 --mbps 100 HOST:PORT [HOST:PORT ...]``: it
prints one line ``ports P1 P2 ...`` (the listening ports, in the order of the upstreams) once
it listens, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

CHUNK = 256 * 1024
BURST = 0.02  # seconds a late wake-up may be behind the rate and still catch up


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
            up_reader, up_writer = await asyncio.open_connection(host, port, limit=2 * CHUNK)

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
                sent = 0.0  # when the bytes sent since the count started are due at the rate
                while True:
                    data = await up_reader.read(CHUNK)
                    if not data:
                        return
                    now = time.monotonic()
                    if now - sent > BURST:  # idle, or too late to catch up: count afresh
                        sent = now
                    sent += len(data) / self.rate
                    writer.write(data)
                    await writer.drain()
                    wait = sent - time.monotonic()
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
    try:
        os.nice(-10)  # see the module docstring; only root may
    except PermissionError:
        pass
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
