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


class Azurite:
    """One Azurite process with blob, queue and table services; data kept in a temp folder so the
    process can be stopped and started again (to test an outage) without losing messages."""

    def __init__(self, location: Path | None = None) -> None:
        self.location = location or Path(tempfile.mkdtemp(prefix="azurite-"))
        self.ports = {"blob": free_port(), "queue": free_port(), "table": free_port()}
        self._process: subprocess.Popen[bytes] | None = None

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
        base = "http://127.0.0.1"
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={base}:{self.ports['blob']}/{ACCOUNT};"
                f"QueueEndpoint={base}:{self.ports['queue']}/{ACCOUNT};"
                f"TableEndpoint={base}:{self.ports['table']}/{ACCOUNT};")

    def start(self, timeout: float = 30) -> Azurite:
        args = [self.executable, "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
                "--location", str(self.location),
                "--blobHost", "127.0.0.1", "--blobPort", str(self.ports["blob"]),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.ports["queue"]),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.ports["table"])]
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
