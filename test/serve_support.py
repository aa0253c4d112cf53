"""
Test support for the remote policy: certificates, tokens and ``vla-ros serve`` processes.

Certificates are made here with the ``cryptography`` package for each test session (a CA,
a server certificate for localhost / 127.0.0.1, robot client certificates whose common name
is the robot id, and a second, untrusted CA); nothing is committed.
"""

import datetime
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

VLA_ROS = os.path.join(os.path.dirname(sys.executable), 'vla-ros')


class Pki:
    """A throw-away CA with server and client certificates written under ``folder``."""

    def __init__(self, folder: str, name: str = 'test-ca'):
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._x509, self._ec, self._oid = x509, ec, NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._sign(subject, self.key.public_key(), ca=True, issuer=subject)
        self.ca_file = self._write(f'{name}.pem', self.cert)

    def _sign(self, subject, public_key, ca=False, issuer=None, sans=()):
        from cryptography.hazmat.primitives import hashes
        x509 = self._x509
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer or self.cert.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)),
                                            critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def _write(self, name: str, obj, key=False) -> str:
        from cryptography.hazmat.primitives import serialization
        path = os.path.join(self.folder, name)
        if key:
            data = obj.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        with open(path, 'wb') as stream:
            stream.write(data)
        os.chmod(path, 0o600)
        return path

    def issue(self, common_name: str, server: bool = False):
        """Return (cert path, key path) of a new leaf certificate signed by this CA."""
        import ipaddress
        x509 = self._x509
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, common_name)])
        sans = ([x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]
                if server else [x509.DNSName(common_name)])
        cert = self._sign(subject, key.public_key(), sans=sans)
        return (self._write(f'{common_name}.crt', cert),
                self._write(f'{common_name}.key', key, key=True))


def new_token(folder: str, robot: str):
    """Return (token file path, tokens-file line) for a new random token of ``robot``."""
    import secrets
    from vla_ros.serve.protocol import token_digest
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
