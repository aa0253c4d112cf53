"""
The fault-injecting proxy of ``vla-ros bench remote-loop``, as a process of its own.

``python -m vla_ros.tools.fault_proxy`` forwards to an echo server run by the test on
127.0.0.1: bytes come back unchanged (with delay and jitter), a round trip takes at least
the configured delay in each direction, a reset setting resets the connection (RST, not a
clean close), and an outage resets open connections and refuses new ones until it ends.
Only lower bounds on time are asserted (a delay must be at least what was asked for).
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from vla_ros.processes import interrupt_and_read


class EchoServer:
    """A TCP echo server on 127.0.0.1 in threads of this process."""

    def __init__(self):
        """Listen on any free port and accept in a thread."""
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
                except OSError:
                    return

    def close(self):
        """Stop listening."""
        self.sock.close()


@pytest.fixture
def echo():
    """Return a running echo server."""
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo, tmp_path):
    """Return a function starting the proxy process in front of ``echo``; returns its port."""
    procs = []

    def start(*options):
        port_file = str(tmp_path / f'proxy{len(procs)}.port')
        proc = subprocess.Popen(
            [sys.executable, '-m', 'vla_ros.tools.fault_proxy', '--target',
             f'127.0.0.1:{echo.port}', '--port-file', port_file] + list(options),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 30.0
        while not os.path.exists(port_file):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, 'proxy did not start in 30 s'
            time.sleep(0.02)
        with open(port_file, encoding='utf-8') as stream:
            return int(stream.read())
    yield start
    for proc in procs:
        code, out = interrupt_and_read(proc, 10)
        assert code == 0, out


def _connect(port):
    conn = socket.create_connection(('127.0.0.1', port), timeout=20.0)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _echo_round(conn, payload: bytes) -> bytes:
    """Send ``payload`` and read as many bytes back (a reader thread: no deadlock)."""
    got = bytearray()

    def read():
        while len(got) < len(payload):
            try:
                data = conn.recv(65536)
            except OSError:   # reset: what came back so far is the answer
                return
            if not data:
                return
            got.extend(data)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        conn.sendall(payload)
    finally:
        reader.join(60.0)
    return bytes(got)


def test_delay_is_added_each_way_and_bytes_pass_unchanged(proxy):
    port = proxy('--delay-ms', '150', '--jitter-ms', '40')
    with _connect(port) as conn:
        for _ in range(3):
            t0 = time.monotonic()
            assert _echo_round(conn, b'ping') == b'ping'
            # 150 ms each way: a round trip is never shorter than 300 ms.
            assert time.monotonic() - t0 >= 0.3
        payload = os.urandom(4 << 20)
        assert _echo_round(conn, payload) == payload   # order kept despite jitter


def test_no_fault_forwards_unchanged(proxy):
    port = proxy()
    with _connect(port) as a, _connect(port) as b:
        pa, pb = os.urandom(1 << 20), os.urandom(1 << 20)
        assert _echo_round(a, pa) == pa
        assert _echo_round(b, pb) == pb


def test_reset_setting_resets_the_connection(proxy):
    port = proxy('--reset-probability', '1')
    with _connect(port) as conn:
        conn.sendall(b'hello')
        with pytest.raises(ConnectionResetError):
            data = conn.recv(10)
            # A reset may show as the next call failing rather than this read.
            assert data == b'', data
            conn.sendall(b'again')
            conn.recv(10)


def test_outage_resets_open_connections_and_the_path_comes_back(proxy):
    port = proxy('--outage-every', '2', '--outage-for', '1')
    # A connection pinged every 50 ms is reset when the outage starts (within 2 s).
    deadline = time.monotonic() + 20.0
    reset = False
    with _connect(port) as conn:
        while time.monotonic() < deadline and not reset:
            try:
                conn.sendall(b'.')
                reset = conn.recv(1) != b'.'
            except ConnectionResetError:
                reset = True
            time.sleep(0.05)
    assert reset, 'no reset within 20 s of outages every 2 s'
    # Then connections are refused (reset) until the path is back, and echo again.
    deadline = time.monotonic() + 20.0
    refused = back = False
    while time.monotonic() < deadline and not back:
        try:
            with _connect(port) as conn:
                back = _echo_round(conn, b'ping') == b'ping'
        except (ConnectionResetError, BrokenPipeError):
            pass
        if not back:
            refused = True
            time.sleep(0.05)
    assert refused and back, (refused, back)
