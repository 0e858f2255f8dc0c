"""Start and stop Azurite (the Azure Storage emulator, installed from npm) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's documented development account; it is public and only ever valid on the emulator.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def write_loopback_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (PEM certificate, PEM key): Azurite's OAuth mode
    only accepts bearer tokens over HTTPS (Azurite README, "HTTPS Setup" and "OAuth
    Configuration": `--oauth basic` requires `--cert`/`--key`)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "loopback-cert.pem", folder / "loopback-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Azurite:
    """One Azurite process with blob, queue and table services; data kept in a temp folder so the
    process can be stopped and started again (to test an outage) without losing messages.

    `oauth=True` serves HTTPS with a self-signed loopback certificate (`certificate`, for the
    client's trust store) and checks bearer tokens as Azurite's `--oauth basic` does: a JWT from a
    known issuer (https://sts.windows.net/...) for a storage audience, within nbf/exp, signature
    not verified -- what the stand-in `az` mints. Shared keys keep working too."""

    def __init__(self, location: Path | None = None, *, oauth: bool = False) -> None:
        self.location = location or Path(tempfile.mkdtemp(prefix="azurite-"))
        self.ports = {"blob": free_port(), "queue": free_port(), "table": free_port()}
        self._process: subprocess.Popen[bytes] | None = None
        self.oauth = oauth
        self.certificate: Path | None = None
        self._key: Path | None = None
        if oauth:
            self.certificate, self._key = write_loopback_certificate(self.location)

    def service_uri(self, service: str) -> str:
        """The service's account URL, as AzureWebJobsStorage__<service>ServiceUri holds it."""
        scheme = "https" if self.oauth else "http"
        return f"{scheme}://127.0.0.1:{self.ports[service]}/{ACCOUNT}"

    @property
    def executable(self) -> str:
        local = ROOT / "node_modules" / ".bin" / "azurite"
        found = str(local) if local.exists() else shutil.which("azurite")
        if not found:
            raise RuntimeError("Azurite is not installed: run `npm install` in the project folder "
                               "(make test and make demo do it for you)")
        return found

    @property
    def connection_string(self) -> str:
        scheme = "https" if self.oauth else "http"
        base = f"{scheme}://127.0.0.1"
        return (f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={base}:{self.ports['blob']}/{ACCOUNT};"
                f"QueueEndpoint={base}:{self.ports['queue']}/{ACCOUNT};"
                f"TableEndpoint={base}:{self.ports['table']}/{ACCOUNT};")

    def start(self, timeout: float = 30) -> Azurite:
        args = [self.executable, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
                "--location", str(self.location),
                "--blobHost", "127.0.0.1", "--blobPort", str(self.ports["blob"]),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.ports["queue"]),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.ports["table"])]
        if self.oauth:
            args += ["--oauth", "basic", "--cert", str(self.certificate), "--key", str(self._key)]
        log = open(self.location / "azurite.log", "ab")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, "AZURITE_ACCEPT_EULA": "true"})
        if not all(_wait_for_port(p, timeout) for p in self.ports.values()):
            self.stop()
            raise RuntimeError(f"Azurite did not start; see {self.location / 'azurite.log'}")
        return self

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
