"""A real Azure Blob API on loopback: Azurite (from npm), as the tests' Azure store.

`make test` installs Azurite into .tools/azurite; when it is missing (no npm) the
Azure tests are skipped with that reason, and S3 + local still run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class Azurite:
    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="azurite-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return AZURITE.exists() and shutil.which("node") is not None

    def start(self) -> Azurite:
        self._proc = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.folder),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("Azurite did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()  # Azurite ignores SIGTERM while flushing; nothing to keep
            self._proc.wait(timeout=10)
            self._proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        # object_store reads AZURITE_BLOB_STORAGE_URL from the environment only.
        return {
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": self.url,
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY,
        }

    @property
    def options(self) -> dict[str, str]:
        return {"AZURE_STORAGE_USE_EMULATOR": "true", "max_retries": "2", "retry_timeout": "3s"}

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.url}/{ACCOUNT};"
        )

    def create_container(self, name: str) -> None:
        self.service().create_container(name)

    def keys(self, container: str, prefix: str) -> list[str]:
        client = self.service().get_container_client(container)
        return sorted(blob.name for blob in client.list_blobs(name_starts_with=prefix))


def install_env(server: Azurite) -> None:
    """The test process itself reads and writes Azure tables too."""
    os.environ.update(server.env)
