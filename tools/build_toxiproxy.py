"""Build Toxiproxy (github.com/Shopify/toxiproxy/v2) from the Go module proxy into .tools/
for the storage-fault tests (issue 26): a TCP proxy whose toxics slow, throttle, slice or
cut the bytes between the merge and an object-store emulator.

Pinned by `tools/toxiproxy/go.mod` and checked by its go.sum (`go build -mod=readonly`).
Cached like the control plane (tools/build_k8s.py): the binary lands in
.tools/toxiproxy/<version>-<hash of go.mod + go.sum>-<Go version>/bin and is rebuilt only
when a pin (or Go) changes.

    python tools/build_toxiproxy.py   # build if needed; print the binary's path
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import time
from pathlib import Path

from build_k8s import REPO, go  # tools/ is on the path when run as a script

MODULE = REPO / "tools" / "toxiproxy"
ROOT = REPO / ".tools" / "toxiproxy"
PACKAGE = "github.com/Shopify/toxiproxy/v2/cmd/server"
NAME = "toxiproxy-server"


def binary() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE / name).read_bytes())
    found = re.search(r"github\.com/Shopify/toxiproxy/v2 (v\S+)", (MODULE / "go.mod").read_text())
    version = found.group(1) if found else "unpinned"
    go_version = go("env", "GOVERSION", cwd=MODULE).strip()
    return ROOT / f"{version}-{digest.hexdigest()[:12]}-{go_version}" / "bin" / NAME


def build() -> Path:
    target = binary()
    if target.is_file():
        return target
    started = time.monotonic()
    staged = target.with_name(f"{NAME}.partial")
    staged.parent.mkdir(parents=True, exist_ok=True)
    go("build", "-mod=readonly", "-trimpath", "-ldflags", "-s -w", "-o", str(staged), PACKAGE,
       cwd=MODULE, env={"CGO_ENABLED": "0"})  # fmt: skip
    staged.rename(target)  # whole or not at all
    print(f"built Toxiproxy in {time.monotonic() - started:.0f} s: {target}", file=sys.stderr)
    return target


def main() -> int:
    if shutil.which("go") is None:  # as for the control plane: those tests then skip
        print("go not found: the Toxiproxy tests will be skipped", file=sys.stderr)
        return 0
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
