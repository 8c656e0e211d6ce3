"""`make cluster-demo`: the operator at work on a local Kubernetes, no cluster needed.

Starts the control plane the e2e tests use (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and the node agent that runs pods as processes), `helm install`s the
chart, applies the sample StagingMerge on demo tables, waits for it to finish, and prints
`kubectl get smerge` and its status. With --keep it stays up until Ctrl-C, printing the
kubeconfig to point your own kubectl at.

    python -m tests.e2e.controlplane.demo [--workdir cluster-demo] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from stagingmerge_merger import sample
from tests.e2e.controlplane.plane import ROOT, ControlPlane, bin_dir, free_port

HELM = ROOT / ".tools" / "bin" / "helm"
NAMESPACE, RELEASE = "stagingmerge-system", "sm"
SAMPLE = ROOT / "crds" / "samples" / "stagingmerge.io_v1alpha1_stagingmerge.yaml"


def run(binary: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([str(binary), "--kubeconfig", str(kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{binary.name} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("cluster-demo"))
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    args = parser.parse_args(argv)
    binaries = bin_dir()
    if binaries is None or not HELM.exists():
        print("no control plane or helm built: run `make tools` first", file=sys.stderr)
        return 2
    shutil.rmtree(args.workdir, ignore_errors=True)
    workdir = args.workdir.resolve()
    print(f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler in {workdir}")
    plane = ControlPlane(binaries, workdir / "controlplane").start()
    try:
        plane.start_node()
        kubectl = binaries / "kubectl"

        def k(*a: str, stdin: str | None = None) -> str:
            return run(kubectl, plane.admin, *a, stdin=stdin)

        k("create", "namespace", NAMESPACE)
        k("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
        liveness = free_port()
        env = [{"name": "STAGINGMERGE_ALLOW_LOCAL_PATHS", "value": "true"}]
        print(f"$ helm install {RELEASE} charts/stagingmerge -n {NAMESPACE}")
        run(HELM, plane.admin, "install", RELEASE, str(ROOT / "charts" / "stagingmerge"),
            "-n", NAMESPACE, "--set", f"operator.livenessPort={liveness}",
            "--set", f"metrics.port={free_port()}", "--set", "operator.logFormat=text",
            "--set", "operator.queuePollSeconds=2", "--set-json",
            f"operator.extraEnv={json.dumps(env)}")  # fmt: skip
        tables = workdir / "tables"
        main_uri, staging_uri = sample.write_demo(tables)
        merge = yaml.safe_load(SAMPLE.read_text())
        merge["metadata"] = {"name": "demo-backfill", "namespace": "default"}
        merge["spec"] = {"main": {"uri": str(main_uri)}, "staging": {"uri": str(staging_uri)}}
        print("$ kubectl apply -f demo-backfill.yaml")
        print(k("apply", "-f", "-", stdin=yaml.safe_dump(merge)), end="")
        print("$ kubectl wait smerge/demo-backfill --for=condition=Succeeded --timeout=-1s")
        plane.wait(
            lambda: any(
                c["type"] == "Succeeded" and c["status"] in ("True", "False")
                for c in json.loads(k("get", "smerge", "demo-backfill", "-o", "json"))
                .get("status", {})
                .get("conditions", [])
            ),
            "the demo merge to finish",
        )
        print("$ kubectl get smerge")
        print(k("get", "smerge"), end="")
        print("$ kubectl get smerge demo-backfill -o jsonpath={.status}")
        status = json.loads(k("get", "smerge", "demo-backfill", "-o", "jsonpath={.status}"))
        print(json.dumps(status, indent=2))
        if args.keep:
            print(f"\nup until Ctrl-C; try: {kubectl} --kubeconfig {plane.admin} get smerge -A")
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        return 0 if status.get("phase") == "Succeeded" else 1
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
