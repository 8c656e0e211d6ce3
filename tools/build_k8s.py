"""Build a real Kubernetes control plane from the official Go modules into .tools/ (issue 23).

kube-apiserver, kube-controller-manager, kube-scheduler and kubectl come from
k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, at the versions pinned by
`tools/k8s/go.mod` and checked by `tools/k8s/go.sum` (both committed; `go build` runs
with -mod=readonly, so a module whose hash differs from go.sum stops the build).

k8s.io/kubernetes cannot simply be `go install`ed: its go.mod requires its staging modules
(k8s.io/api, apimachinery, client-go, ...) at v0.0.0 and replaces them with folders of its
own repository, and replace lines count only in the main module. So tools/k8s is a small
module of ours that requires k8s.io/kubernetes and replaces each of those v0.0.0 modules
with the published v0.<minor>.<patch> (kubernetes/kubernetes#79384). `--pin VERSION`
writes that go.mod for another release (the list of modules read from its own go.mod)
and runs `go mod tidy`.

Cached: the binaries land in .tools/k8s/<key>/bin, <key> being the Kubernetes version, a
hash of go.mod + go.sum and the Go version; a complete folder is reused, so a pin change
(or a new Go) is the only thing that rebuilds. Prints how long the build took and what it
weighs.

    python tools/build_k8s.py               # build if needed; print the bin folder
    python tools/build_k8s.py --pin v1.37.3 # move the pins (then commit tools/k8s/)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "tools" / "k8s"
ROOT = REPO / ".tools" / "k8s"
COMMANDS = {  # binary name -> package; also the go.mod's `tool` lines
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# upstream's flags for server binaries (hack/lib/golang.sh): no cgo, these tags
BUILD_TAGS = "selinux,notest,grpcnotrace"
_STAGING_REQUIRE = re.compile(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$", re.MULTILINE)
_REQUIRE = re.compile(r"^\s*(k8s\.io/kubernetes|go\.etcd\.io/etcd/server/v3) (v\S+)", re.M)


def go(*args: str, cwd: Path = MODULE, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["go", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"go {' '.join(args[:2])} failed in {cwd}: {detail[0]}")
    return result.stdout


def pins() -> dict[str, str]:
    """{"k8s.io/kubernetes": "v1.37.2", "go.etcd.io/etcd/server/v3": "v3.7.0"} from go.mod."""
    return dict(_REQUIRE.findall((MODULE / "go.mod").read_text()))


def key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE / name).read_bytes())
    version = go("env", "GOVERSION").strip()
    return f"{pins()['k8s.io/kubernetes']}-{digest.hexdigest()[:12]}-{version}"


def bin_dir() -> Path:
    return ROOT / key() / "bin"


def ldflags(kubernetes: str) -> str:
    """Strip symbols and stamp the version, as hack/lib/version.sh does: without it the
    server says v0.0.0-master and helm's kubeVersion checks would refuse the chart."""
    major, minor = kubernetes.removeprefix("v").split(".")[:2]
    stamp = {"gitVersion": kubernetes, "gitMajor": major, "gitMinor": minor,
             "gitTreeState": "clean"}  # fmt: skip
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in stamp.items()]
    return " ".join(flags)


def build() -> Path:
    target = bin_dir()
    if all((target / name).is_file() for name in COMMANDS):
        return target
    kubernetes = pins()["k8s.io/kubernetes"]
    print(f"building Kubernetes {kubernetes} and etcd from the Go module proxy (first time"
          " only: about 10 minutes on 2 cores)", file=sys.stderr)  # fmt: skip
    started = time.monotonic()
    staged = target.with_name("bin.partial")
    shutil.rmtree(staged, ignore_errors=True)
    for name, package in COMMANDS.items():
        step = time.monotonic()
        go("build", "-mod=readonly", "-trimpath", "-tags", BUILD_TAGS,
           "-ldflags", ldflags(kubernetes), "-o", str(staged / name), package,
           env={"CGO_ENABLED": "0"})  # fmt: skip
        print(f"  {name}: {time.monotonic() - step:.0f} s", file=sys.stderr)
    staged.rename(target)  # whole or not at all: a killed build leaves no half folder
    size = sum(p.stat().st_size for p in target.iterdir()) / 2**20
    print(f"built in {time.monotonic() - started:.0f} s: {size:.0f} MiB in {target}",
          file=sys.stderr)  # fmt: skip
    return target


def pin(kubernetes: str) -> None:
    """Rewrite tools/k8s/go.mod for `kubernetes` (v1.X.Y) and tidy it."""
    staging_tag = "v0." + kubernetes.removeprefix("v1.")
    info = json.loads(go("mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes}"))
    upstream = Path(info["GoMod"]).read_text()
    etcd = re.search(r"go\.etcd\.io/etcd/server/v3 (v\S+)", upstream)
    modules = sorted(set(_STAGING_REQUIRE.findall(upstream)))
    tools = "\n".join(f"\t{package}" for package in sorted(COMMANDS.values()))
    replaces = "\n".join(f"\t{m} => {m} {staging_tag}" for m in modules)
    (MODULE / "go.mod").write_text(
        "// Pins of the real control plane the e2e suite runs on (tools/build_k8s.py).\n"
        "module stagingmerge.io/k8s-tools\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n"
        f"require (\n\tk8s.io/kubernetes {kubernetes}\n"
        f"\tgo.etcd.io/etcd/server/v3 {etcd.group(1) if etcd else 'latest'}\n)\n\n"
        f"tool (\n{tools}\n)\n\nreplace (\n{replaces}\n)\n"
    )
    go("mod", "tidy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pin", metavar="VERSION", help="move the pins to this v1.X.Y")
    args = parser.parse_args(argv)
    if shutil.which("go") is None:
        # like npm for Azurite: without Go the tests on the real control plane skip
        print("go not found: the tests on the real control plane will be skipped",
              file=sys.stderr)  # fmt: skip
        return 0
    if args.pin:
        pin(args.pin)
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
