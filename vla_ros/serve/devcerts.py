"""
Throw-away certificates for development, tests and benchmarks (needs ``cryptography``).

A CA, server certificates for localhost / 127.0.0.1 and client certificates whose common
name is the robot id, valid for two days, keys unencrypted (mode 600). Not for robots in
service: there, certificates come from the site's own CA and key management.
"""

import datetime
import os


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
