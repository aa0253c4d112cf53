"""
A fault-injecting TCP proxy for loopback benchmarks and tests: delay, jitter, resets, outages.

``FaultProxy`` listens on 127.0.0.1 and forwards every connection to one target (a
``vla-ros serve`` port). It sees only bytes, so gRPC over TLS passes through unchanged. The
faults, changeable while it runs (``set_faults``):

* ``delay`` (s, each direction): every chunk read from one side is written to the other
  ``delay`` seconds after it arrived, as a network adds latency (netem's ``delay``); a round
  trip gains twice that. Chunks are not held back behind each other's delay, so bandwidth
  is not reduced.
* ``jitter`` (s): each chunk waits a further uniform(0, jitter); the byte order of a stream
  is kept (a chunk never overtakes the one before it), as TCP would deliver it.
* ``reset_probability``: each forwarded chunk resets its connection (RST on both sides)
  with this probability: how a lossy path looks to an application over TCP (lost packets
  are retransmitted by TCP; what reaches the application is a stall or a broken
  connection).
* ``outage_every`` / ``outage_for`` (s): every ``outage_every`` seconds the path goes down
  for ``outage_for`` seconds: open connections are reset and new ones reset on accept.

Run alone (``python -m vla_ros.tools.fault_proxy --target 127.0.0.1:50051 --delay-ms 150``)
it prints its port and forwards until Ctrl-C.
"""

import argparse
import asyncio
from dataclasses import dataclass, replace
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from typing import Optional, Sequence, Set

CHUNK = 65536


@dataclass(frozen=True)
class Faults:
    """What the proxy does to the traffic (see the module docstring)."""

    delay: float = 0.0
    jitter: float = 0.0
    reset_probability: float = 0.0
    outage_every: float = 0.0
    outage_for: float = 0.0

    def __post_init__(self):
        """Refuse values that mean nothing."""
        if min(self.delay, self.jitter, self.outage_every, self.outage_for) < 0:
            raise ValueError(f'fault times must be >= 0: {self}')
        if not 0.0 <= self.reset_probability <= 1.0:
            raise ValueError(f'reset_probability must be in [0, 1]: {self.reset_probability}')
        if self.outage_for and not self.outage_every > self.outage_for:
            raise ValueError('outage_every must be longer than outage_for')


def _reset(writer: asyncio.StreamWriter):
    """Close with RST (SO_LINGER 0) rather than FIN: the peer sees a reset connection."""
    sock = writer.get_extra_info('socket')
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class _Connection:
    """One client connection and its connection to the target."""

    def __init__(self, proxy: 'FaultProxy', client_w, target_w):
        self.proxy = proxy
        self.writers = (client_w, target_w)
        self.closed = False

    def reset(self):
        if not self.closed:
            self.closed = True
            self.proxy.resets += 1
            for w in self.writers:
                _reset(w)

    def close(self):
        if not self.closed:
            self.closed = True
            for w in self.writers:
                w.transport.abort()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Forward reader → writer, each chunk released at arrival + delay (+ jitter)."""
        queue: asyncio.Queue = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        last_release = 0.0
        try:
            while not self.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                faults = self.proxy.faults
                if faults.reset_probability and random.random() < faults.reset_probability:
                    self.reset()
                    break
                release = time.monotonic() + faults.delay + (
                    random.uniform(0.0, faults.jitter) if faults.jitter else 0.0)
                last_release = max(last_release, release)   # never overtake
                queue.put_nowait((last_release, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(None)          # end of stream: half-close after what is queued
        await sender

    async def _send(self, queue: asyncio.Queue, writer: asyncio.StreamWriter):
        try:
            while True:
                item = await queue.get()
                if item is None:
                    if not self.closed and writer.can_write_eof():
                        writer.write_eof()
                    return
                release, data = item
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.closed:
                    return
                writer.write(data)
                self.proxy.forwarded += len(data)
                await writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            self.close()


class FaultProxy:
    """The proxy, on its own thread and event loop; ``start`` returns the port it listens on."""

    def __init__(self, target_host: str, target_port: int, faults: Faults = Faults(),
                 host: str = '127.0.0.1', port: int = 0):
        """Prepare a proxy to ``target_host:target_port``; nothing listens before start."""
        self.target = (target_host, int(target_port))
        self.host, self.port = host, int(port)
        self.faults = faults
        self.connections_total = 0
        self.resets = 0           # connections reset by a fault
        self.refused = 0          # connections reset on accept during an outage
        self.forwarded = 0        # bytes written, both directions
        self.down = False
        self._conns: Set[_Connection] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._outages: Optional[asyncio.Task] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    # -- control, from any thread -----------------------------------------------------------
    def start(self) -> int:
        """Listen and forward on a thread of its own; return the port."""
        self._thread = threading.Thread(target=self._run, name='fault_proxy', daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise RuntimeError('fault proxy did not start')
        return self.port

    @property
    def endpoint(self) -> str:
        """Return host:port where it listens."""
        return f'{self.host}:{self.port}'

    def set_faults(self, faults: Faults = None, **changes):
        """Change the faults (new chunks and connections use them at once)."""
        faults = replace(faults or self.faults, **changes)
        self._call(self._apply, faults)

    def reset_all(self):
        """Reset every open connection now (a disconnect)."""
        self._call(self._reset_all)

    def stop(self):
        """Close everything and stop the thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown)
        self._thread.join(10.0)

    def _call(self, fn, *args):
        if self._loop is None:   # not started: only the faults can change
            if fn == self._apply:
                self.faults = args[0]
            return
        done = threading.Event()

        def run():
            try:
                fn(*args)
            finally:
                done.set()
        self._loop.call_soon_threadsafe(run)
        done.wait(10.0)

    # -- the event loop -------------------------------------------------------------------
    def _run(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            self._apply(self.faults)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
            loop.close()

    def _apply(self, faults: Faults):
        self.faults = faults
        if self._outages is not None:
            self._outages.cancel()
            self._outages = None
            self.down = False
        if self._loop is not None and faults.outage_every > 0 and faults.outage_for > 0:
            self._outages = self._loop.create_task(self._outage_cycle(faults))

    async def _outage_cycle(self, faults: Faults):
        try:
            while True:
                await asyncio.sleep(faults.outage_every - faults.outage_for)
                self.down = True
                self._reset_all()
                await asyncio.sleep(faults.outage_for)
                self.down = False
        except asyncio.CancelledError:
            self.down = False
            raise

    def _reset_all(self):
        for conn in list(self._conns):
            conn.reset()

    def _shutdown(self):
        if self._outages is not None:
            self._outages.cancel()
        for conn in list(self._conns):
            conn.close()
        if self._server is not None:
            self._server.close()
        self._loop.stop()

    async def _accept(self, client_r, client_w):
        self.connections_total += 1
        if self.down:
            self.refused += 1
            _reset(client_w)
            return
        try:
            target_r, target_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_w)
            return
        for w in (client_w, target_w):
            sock = w.get_extra_info('socket')
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, client_w, target_w)
        self._conns.add(conn)
        try:
            await asyncio.gather(conn.pipe(client_r, target_w), conn.pipe(target_r, client_w))
        finally:
            self._conns.discard(conn)
            conn.close()


def main(argv: Sequence[str] = None) -> int:
    """Run the proxy in the foreground until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog='python -m vla_ros.tools.fault_proxy',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--target', required=True, help='host:port to forward to')
    p.add_argument('--port', type=int, default=0, help='port on 127.0.0.1 (0: any free one)')
    p.add_argument('--port-file', default='', help='write the port there once listening')
    p.add_argument('--delay-ms', type=float, default=0.0, help='added delay, each direction')
    p.add_argument('--jitter-ms', type=float, default=0.0)
    p.add_argument('--reset-probability', type=float, default=0.0, help='per chunk')
    p.add_argument('--outage-every', type=float, default=0.0, help='seconds')
    p.add_argument('--outage-for', type=float, default=0.0, help='seconds')
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(':')
    try:
        faults = Faults(args.delay_ms / 1e3, args.jitter_ms / 1e3, args.reset_probability,
                        args.outage_every, args.outage_for)
    except ValueError as exc:
        print(f'fault_proxy: {exc}', file=sys.stderr)
        return 2
    proxy = FaultProxy(host or '127.0.0.1', int(port), faults, port=args.port)
    proxy.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.port_file:
        with open(args.port_file + '.tmp', 'w', encoding='utf-8') as stream:
            stream.write(str(proxy.port))
        os.replace(args.port_file + '.tmp', args.port_file)
    print(f'fault_proxy: 127.0.0.1:{proxy.port} -> {args.target} ({faults})', flush=True)
    stop.wait()
    proxy.stop()
    print(f'fault_proxy: {proxy.connections_total} connections, {proxy.resets} reset, '
          f'{proxy.refused} refused, {proxy.forwarded} bytes forwarded', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
