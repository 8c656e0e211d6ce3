"""The Helm chart, checked with a real helm (tools/get_helm.py puts it in .tools/bin)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stagingmerge"
HELM = ROOT / ".tools" / "bin" / "helm"
EVERYTHING = ROOT / "tests" / "data" / "values-everything.yaml"
K8S_VERSION = "1.31.0"  # the chart's minimum (kubeVersion in Chart.yaml)

pytestmark = [
    pytest.mark.chart,
    pytest.mark.skipif(not HELM.exists(), reason="run tools/get_helm.py (make test does)"),
]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=check, timeout=120
    )


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "sm", str(CHART), "--namespace", "stagingmerge", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


VARIANTS = {"defaults": (), "everything": ("-f", str(EVERYTHING))}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(variant):
    result = helm("lint", "--strict", str(CHART), *VARIANTS[variant], check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_are_valid_kubernetes(variant):
    docs = render(*VARIANTS[variant])
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a prometheus-operator CRD: no schema here
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_is_least_privilege(variant):
    docs = render(*VARIANTS[variant])
    rules = [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]
    assert rules
    for rule in rules:
        assert "secrets" not in rule["resources"]
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule.get("apiGroups", [])
        assert "deletecollection" not in rule["verbs"]
        # the one delete: a finished StagingMerge whose ttlSecondsAfterFinished passed
        assert "delete" not in rule["verbs"] or rule["resources"] == ["stagingmerges"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for needed in [
        ("stagingmerge.io", "stagingmerges", "watch"),
        ("stagingmerge.io", "stagingmerges", "patch"),
        ("stagingmerge.io", "stagingmerges/status", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
        ("", "events", "create"),
        # blockOwnerDeletion on the Jobs' ownerReference (OwnerReferencesPermissionEnforcement)
        ("stagingmerge.io", "stagingmerges/finalizers", "update"),
    ]:
        assert needed in granted, needed
    # kopf's cluster scanning is off: no CRD or namespace rights in any install mode
    assert not {r for _, r, _ in granted} & {"customresourcedefinitions", "namespaces"}
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("Role", "ClusterRole")}
    assert names == {
        "sm-stagingmerge-framework",
        "sm-stagingmerge-reconciler",
        "sm-stagingmerge-leader",
    }
    leader = next(d for d in docs if d["metadata"]["name"] == "sm-stagingmerge-leader")
    assert leader["kind"] == "Role" and leader["metadata"]["namespace"] == "stagingmerge"
    assert leader["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "patch"],
        }
    ]


def test_namespaced_watching_creates_nothing_cluster_wide():
    docs = render("-f", str(EVERYTHING))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    assert {d["metadata"]["namespace"] for d in by_kind(docs, "Role")} == {
        "ct-lake",
        "ct-lake-dev",
        "stagingmerge",  # the leader's Lease only
    }
    env = {
        e["name"]: e.get("value")
        for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["STAGINGMERGE_NAMESPACES"] == "ct-lake,ct-lake-dev"


def test_cluster_wide_watching_uses_cluster_roles():
    docs = render()
    assert len(by_kind(docs, "ClusterRole")) == 2
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role")] == ["sm-stagingmerge-leader"]
    binding = by_kind(docs, "ClusterRoleBinding")[0]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sm-stagingmerge", "namespace": "stagingmerge"}
    ]


def test_operator_deployment():
    deployment = by_kind(render(), "Deployment")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    env = {e["name"]: e.get("value") for e in container["env"]}
    leader = next(
        e for e in container["env"] if e["name"] == "STAGINGMERGE_LEADER_ELECTION_NAMESPACE"
    )
    assert leader["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["STAGINGMERGE_DEFAULT_IMAGE"] == "ghcr.io/stagingmerge/merge:0.1.0"
    assert env["STAGINGMERGE_NAMESPACES"] == "" and env["STAGINGMERGE_JOB_TTL_SECONDS"] == "86400"
    # the merge ServiceAccount exists only where the chart made it: there it is named
    assert env["STAGINGMERGE_MERGE_SERVICE_ACCOUNT_NAMESPACES"] == "stagingmerge"


def test_every_option_shows_up():
    docs = render("-f", str(EVERYTHING))
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "registry.example.com/stagingmerge/operator:0.1.0-rc1"
    assert env["STAGINGMERGE_DEFAULT_IMAGE"] == "registry.example.com/stagingmerge/merge:0.1.0-rc1"
    assert env["STAGINGMERGE_ALLOWED_PREFIXES"] == "s3://ct-lake/staging,s3://ct-lake-dev/staging"
    assert env["STAGINGMERGE_MERGE_SERVICE_ACCOUNT"] == "ct-merge"
    assert json.loads(env["STAGINGMERGE_DEFAULT_RESOURCES"])["limits"] == {"memory": "4Gi"}
    assert env["STAGINGMERGE_JOB_DEADLINE_SECONDS"] == "43200"
    assert env["STAGINGMERGE_MERGE_IMAGE_PULL_SECRETS"] == "registry"
    assert env["STAGINGMERGE_METRICS_PORT"] == "9191" and env["STAGINGMERGE_LOG_FORMAT"] == "text"
    assert pod["serviceAccountName"] == "ct-operator" and pod["priorityClassName"]
    assert pod["nodeSelector"] == {"pool": "system"} and pod["tolerations"] and pod["affinity"]
    monitor = by_kind(docs, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s"}]
    merge_accounts = [
        d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == "ct-merge"
    ]
    assert {d["metadata"]["namespace"] for d in merge_accounts} == {
        "stagingmerge",
        "ct-lake",
        "ct-lake-dev",
    }
    assert all(d["automountServiceAccountToken"] is False for d in merge_accounts)
    assert merge_accounts[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]


def test_cluster_cronjobs_one_per_table():
    """maintenance.cluster: a CronJob per main table running stagingmerge-cluster with the
    merge image, as the merge ServiceAccount; nothing unless enabled."""
    assert not by_kind(render(), "CronJob")
    jobs = {
        d["metadata"]["name"]: d
        for d in by_kind(render("-f", str(EVERYTHING)), "CronJob")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "cluster"
    }
    assert sorted(jobs) == ["sm-stagingmerge-cluster-entries", "sm-stagingmerge-cluster-precerts"]
    entries = jobs["sm-stagingmerge-cluster-entries"]["spec"]
    assert (entries["schedule"], entries["timeZone"]) == ("30 2 * * *", "Etc/UTC")
    assert entries["concurrencyPolicy"] == "Forbid"
    pod = entries["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["stagingmerge-cluster"]
    assert container["image"] == "registry.example.com/stagingmerge/merge:0.1.0-rc1"
    assert container["args"] == [
        "--main=s3://ct-lake/main/entries",
        "--by=source_url,cert_index",
        "--skip-newest=2",
        "--max-partitions=30",
        "--max-spill-size=2G",
        "--log-format=json",
    ]
    assert (
        "--skip-newest=0"
        in jobs["sm-stagingmerge-cluster-precerts"]["spec"]["jobTemplate"]["spec"]["template"][
            "spec"
        ]["containers"][0]["args"]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["STAGINGMERGE_STORAGE_OPTIONS"]) == {"AWS_REGION": "eu-west-1"}
    assert container["envFrom"] == [{"secretRef": {"name": "ct-lake-s3"}}]
    assert container["resources"]["limits"] == {"memory": "6Gi"}
    assert pod["serviceAccountName"] == "ct-merge" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "50Gi"}}]
    rules = entries["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [2] and rules[0]["action"] == "FailJob"


def test_index_cronjobs_one_per_table():
    """maintenance.index: a CronJob per main table running stagingmerge-index with the merge
    image, as the merge ServiceAccount, on a read-only root; nothing unless enabled."""
    jobs = {
        d["metadata"]["name"]: d
        for d in by_kind(render("-f", str(EVERYTHING)), "CronJob")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "index"
    }
    assert sorted(jobs) == ["sm-stagingmerge-index-entries", "sm-stagingmerge-index-events"]
    spec = jobs["sm-stagingmerge-index-entries"]["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"]) == ("15 * * * *", "Forbid")
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["stagingmerge-index"]
    assert container["image"] == "registry.example.com/stagingmerge/merge:0.1.0-rc1"
    assert container["args"] == [
        "--main=s3://ct-lake/main/entries",
        "--keys=source_url,cert_index",
        "--log-format=json",
    ]
    events = jobs["sm-stagingmerge-index-events"]["spec"]["jobTemplate"]["spec"]["template"]
    assert "--keys=log_id,seq" in events["spec"]["containers"][0]["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["STAGINGMERGE_STORAGE_OPTIONS"]) == {"AWS_REGION": "eu-west-1"}
    assert container["envFrom"] == [{"secretRef": {"name": "ct-lake-s3"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "ct-merge" and pod["automountServiceAccountToken"] is False
    rules = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"] == {"containerName": "index", "operator": "In", "values": [2]}
    assert not [d for d in by_kind(render(), "CronJob")]


def test_metrics_can_be_turned_off():
    docs = render("--set", "metrics.enabled=false")
    assert not by_kind(docs, "Service")
    env = {
        e["name"]: e.get("value")
        for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["STAGINGMERGE_METRICS_PORT"] == "0"


@pytest.mark.parametrize(
    "bad",
    [
        "operator.logFormat=xml",
        "watchNamespaces[0]=Not_A_Name",
        "metrics.port=0",
        "unknownKey=1",
        "maintenance.cluster.tables[0].name=Not_A_Name",
        "maintenance.cluster.tables[0].skipNewest=-1",
        "maintenance.index.tables[0].name=Not_A_Name",
        "maintenance.index.unknown=1",
    ],
)
def test_values_schema_rejects_bad_values(bad):
    result = helm("template", "sm", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0 and "values don't meet the specifications" in result.stderr


def test_chart_crd_is_the_crd_and_upgrades_with_the_chart():
    assert (CHART / "files" / "stagingmerge.io_stagingmerges.yaml").read_text() == (
        ROOT / "crds" / "stagingmerge.io_stagingmerges.yaml"
    ).read_text()
    # a template, not crds/ (which helm installs once and never upgrades), kept on uninstall
    assert not (CHART / "crds").exists()
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    assert crd == yaml.safe_load((ROOT / "crds" / "stagingmerge.io_stagingmerges.yaml").read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not by_kind(render("--set", "crds.install=false"), "CustomResourceDefinition")


def test_every_value_is_documented():
    """Every key in values.yaml has a "# --" comment right above it (helm-docs style)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        above = index - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1  # continuation lines of a multi-line comment
        if above < 0 or not lines[above].strip().startswith("# --"):
            undocumented.append(stripped)
    assert undocumented == []


def test_notes_tell_what_to_do_next():
    out = helm(
        "install", "sm", str(CHART), "--namespace", "stagingmerge", "--dry-run=client"
    ).stdout
    assert "kubectl wait --for=condition=Succeeded" in out
    assert "kubectl get smerge" in out


def test_the_dashboard_is_a_configmap_for_the_grafana_sidecar_reading_real_metrics():
    from prometheus_client import REGISTRY

    import stagingmerge_operator.metrics  # noqa: F401 - registers the operator's metrics

    assert not by_kind(render(), "ConfigMap")  # optional, off by default
    (configmap,) = by_kind(render("-f", str(EVERYTHING)), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(configmap["data"]["stagingmerge.json"])
    assert dashboard["uid"] == "stagingmerge-fleet" and dashboard["panels"]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    known = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("stagingmerge_")
        for suffix in suffixes[family.type]
    }
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"stagingmerge_[a-z_]+", target["expr"])
    }
    assert used and used <= known, used - known
    assert {"stagingmerge_merges_queued", "stagingmerge_merge_duration_seconds_bucket"} <= used


def test_the_per_main_limit_reaches_the_operator():
    (deployment,) = by_kind(render("-f", str(EVERYTHING)), "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["STAGINGMERGE_MAX_CONCURRENT_PER_MAIN"] == "3"
