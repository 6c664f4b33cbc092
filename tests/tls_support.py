"""A throwaway PKI for the TLS tests, made with the `openssl` command line.

    pki = Pki(tmp_path)                      # a CA (ECDSA P-256), its certificate in pki.ca
    pair = pki.issue("server")               # leaf for localhost / 127.0.0.1, signed by the CA
    pair.cert, pair.key, pair.serial         # PEM chain path, PEM key path, serial (hex, upper)
    pki.issue("rsa", key="rsa")              # key: "ec" (P-256, default), "rsa" (2048), "ed25519"
    pki.issue("old", days=-1)                # already expired (notAfter yesterday)

Nothing is written outside the directory given; every call runs `openssl` with a timeout.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT = 30

KEY_ARGS = {
    "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ed25519": ["-algorithm", "ED25519"],
}


def openssl(*args: str, cwd: Path) -> str:
    """Runs `openssl args...` in `cwd`; returns stdout, raises with stderr on failure."""
    done = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class CertPair:
    """A leaf certificate chain and its private key, as PEM files."""

    cert: Path
    key: Path
    serial: str


class Pki:
    """A CA in `directory`, issuing leaf certificates for localhost and 127.0.0.1."""

    def __init__(self, directory: Path, name: str = "pingwheel test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = self.dir / "ca.key"
        self.ca = self.dir / "ca.pem"
        self._serial = 0x1000
        openssl("genpkey", *KEY_ARGS["ec"], "-out", str(self.ca_key), cwd=self.dir)
        openssl(
            "req", "-x509", "-new", "-key", str(self.ca_key), "-out", str(self.ca),
            "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )

    def issue(self, name: str, key: str = "ec", days: int = 2) -> CertPair:
        """A new leaf `name` with a fresh serial; `days` < 0 makes it already expired."""
        self._serial += 1
        serial = f"{self._serial:X}"
        key_path = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        leaf = self.dir / f"{name}.leaf.pem"
        ext = self.dir / f"{name}.ext"
        ext.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "basicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl("genpkey", *KEY_ARGS[key], "-out", str(key_path), cwd=self.dir)
        openssl(
            "req", "-new", "-key", str(key_path), "-out", str(csr), "-subj", f"/CN={name}",
            cwd=self.dir,
        )
        # `openssl ca` (not `x509 -req`) because it can also back-date: an expired leaf
        # gets explicit dates in 2020.
        db = self.dir / "ca-db"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        (db / "serial").write_text(serial + "\n")
        conf = self.dir / "ca.cnf"
        conf.write_text(
            "[ca]\ndefault_ca = local\n[local]\n"
            f"database = {db / 'index.txt'}\nserial = {db / 'serial'}\nnew_certs_dir = {db}\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        )
        dates = ["-days", str(days)] if days > 0 else [
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
        openssl(
            "ca", "-batch", "-notext", "-config", str(conf), "-cert", str(self.ca),
            "-keyfile", str(self.ca_key), "-in", str(csr), "-out", str(leaf),
            "-extfile", str(ext), *dates,
            cwd=self.dir,
        )
        chain = self.dir / f"{name}.pem"
        chain.write_text(leaf.read_text() + self.ca.read_text())
        return CertPair(cert=chain, key=key_path, serial=serial)


#: How long a client waits for a TLS 1.3 server's session tickets after the handshake.
TICKET_WAIT = 2.0


class ClientContext(ssl.SSLContext):
    """A client context whose sockets come back from the handshake with the server's
    TLS 1.3 session tickets already read.

    Python's ssl sockets are not safe to read in one thread while another writes, and
    websockets' sync client does exactly that: its reader thread starts before the
    opening request is written. A TLS 1.3 server's NewSessionTicket records arrive just
    after the handshake, so the reader thread handles them while the main thread writes
    the request, and about one connection in 300 lost its request (no bytes queued on
    either side, the client waiting until the server's open timeout; the same load with
    the single-threaded asyncio client never stalled). Reading the tickets here, before
    anyone else touches the socket, removes the race.
    """

    def wrap_socket(self, *args, **kwargs):
        tls = super().wrap_socket(*args, **kwargs)
        if tls.version() == "TLSv1.3":
            read_tickets(tls)
        return tls


def read_tickets(tls: ssl.SSLSocket) -> None:
    """Lets OpenSSL read the session tickets that follow a TLS 1.3 handshake; a resumed
    session (which has a ticket already) waits one short read for a fresh one."""
    previous = tls.gettimeout()
    deadline = time.monotonic() + TICKET_WAIT
    try:
        while time.monotonic() < deadline:
            if tls.session_reused or (tls.session is not None and tls.session.has_ticket):
                if not tls.session_reused:
                    return
                deadline = min(deadline, time.monotonic() + 0.05)
            tls.settimeout(0.02)
            try:
                data = tls.recv(1)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            if data:
                raise RuntimeError("the server sent data before the client's first request")
            return  # closed by the server: the caller sees it on its first read
    finally:
        tls.settimeout(previous)


def client_context(ca: Path, maximum: "ssl.TLSVersion | None" = None) -> ClientContext:
    """A :class:`ClientContext` that verifies against `ca` only (hostname included)."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    if maximum is not None:
        context.maximum_version = maximum
    return context
