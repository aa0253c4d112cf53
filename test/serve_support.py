"""
Test support for the remote policy: certificates, tokens and ``vla-ros serve`` processes.

Certificates are made for each test session with the ``cryptography`` package
(``vla_ros.serve.devcerts.Pki``: a CA, a server certificate for localhost / 127.0.0.1, robot
client certificates whose common name is the robot id, and a second, untrusted CA); nothing
is committed.
"""

import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from vla_ros.serve.devcerts import Pki  # noqa: F401 - tests import it from here

VLA_ROS = os.path.join(os.path.dirname(sys.executable), 'vla-ros')


def new_token(folder: str, robot: str):
    """Return (token file path, tokens-file line) for a new random token of ``robot``."""
    import secrets
    from vla_ros.wire.protocol import token_digest
    token = secrets.token_urlsafe(24)
    path = os.path.join(folder, f'{robot}.token')
    with open(path, 'w', encoding='utf-8') as stream:
        stream.write(token + '\n')
    os.chmod(path, 0o600)
    return path, f'{robot}: {token_digest(token)}'


class ServerProcess:
    """``vla-ros serve`` as a child process on 127.0.0.1, any free port."""

    def __init__(self, folder: str, args: List[str], port: int = 0, name: str = 'server'):
        self.folder, self.args, self.name = folder, list(args), name
        self.port = port
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(folder, f'{name}.log')

    def start(self, timeout: float = 90.0) -> 'ServerProcess':
        """Start it and wait until it serves (its port file appears); RuntimeError if not."""
        port_file = os.path.join(self.folder, f'{self.name}.port')
        if os.path.exists(port_file):
            os.unlink(port_file)
        log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            [VLA_ROS, 'serve', '--host', '127.0.0.1', '--port', str(self.port),
             '--port-file', port_file] + self.args,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(port_file):
                with open(port_file, encoding='utf-8') as stream:
                    self.port = int(stream.read().strip())
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f'vla-ros serve exited {self.proc.returncode}:\n'
                                   f'{self.log()}')
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f'vla-ros serve did not start in {timeout} s:\n{self.log()}')

    @property
    def endpoint(self) -> str:
        """Return host:port."""
        return f'127.0.0.1:{self.port}'

    def log(self) -> str:
        """Return the server's output so far."""
        try:
            with open(self.log_path, encoding='utf-8', errors='replace') as stream:
                return stream.read()[-6000:]
        except OSError:
            return ''

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM (graceful drain); return the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        """SIGKILL: the server dies mid-run, as a crashed host would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
