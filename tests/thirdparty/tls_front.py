"""A TLS-terminating front for a plain-HTTP server, as nginx or Envoy would be: it demands
a client certificate signed by the test CA, records whose it was, and passes it on to the
server behind in ``X-Client-Cert`` (URL-encoded PEM) with ``X-Client-Verify: SUCCESS``,
which is how oidc-provider's mTLS feature learns it (tests/thirdparty/node/oidc_provider.mjs).

Also the test PKI: keys, a CA, certificates and public JWKs, all made at test time with
``cryptography`` (no key is ever committed).
"""

from __future__ import annotations

import datetime
import http.client
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# --------------------------------------------------------------------------- keys and certificates


def make_key(kind: str) -> Any:
    """A new private key: kind "rsa" (2048 bits), "ec" (P-256) or "ec384" (P-384)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "ec384" else ec.SECP256R1())


def key_pem(key: Any) -> str:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode("ascii")


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    import json

    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    key: Any, cn: str, issuer_key: Any | None = None, issuer_cn: str | None = None, *, ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn or cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca and issuer_cn is not None and cn == "127.0.0.1":
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class Pki:
    """A test CA in ``directory``, with a server certificate for 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_key = make_key("ec")
        self.ca_cert = make_cert(self.ca_key, "tokend test CA", ca=True)
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_text(cert_pem(self.ca_cert))
        self.server_cert, self.server_key = self.issue("127.0.0.1", "server")

    def issue(self, cn: str, stem: str) -> tuple[Path, Path]:
        """A certificate for ``cn`` signed by the CA: (cert file, key file)."""
        key = make_key("ec")
        cert = make_cert(key, cn, self.ca_key, "tokend test CA")
        cert_file, key_file = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_file.write_text(cert_pem(cert))
        key_file.write_text(key_pem(key))
        key_file.chmod(0o600)
        return cert_file, key_file


# --------------------------------------------------------------------------- the front


class TlsFront:
    """``https://127.0.0.1:PORT`` in front of ``http://127.0.0.1:upstream``."""

    def __init__(self, upstream: int, pki: Pki) -> None:
        self.upstream = upstream
        self.subjects: list[str] = []  # the client certificate of each request, in order
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED  # no certificate, no handshake
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.forward()

            def do_POST(self) -> None:
                self.forward()

            def forward(self) -> None:
                connection: Any = self.connection  # an ssl.SSLSocket
                der = connection.getpeercert(binary_form=True)
                pem = ssl.DER_cert_to_PEM_cert(der)
                front.subjects.append(x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string())
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("x-client-")}
                headers.update({"X-Client-Cert": quote(pem, safe=""), "X-Client-Verify": "SUCCESS"})
                headers["Connection"] = "close"
                upstream = http.client.HTTPConnection("127.0.0.1", front.upstream, timeout=10)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
