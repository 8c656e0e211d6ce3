"""The CRD as the real API server serves it: validation (OpenAPI and CEL), defaults,
pruning, the status subresource, and what kubectl reads (columns, short names)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.e2e.controlplane.plane import ControlPlane
from tests.e2e.harness import GROUP, PLURAL, VERSION, Cli

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))
INVALID = list(
    yaml.safe_load_all((ROOT / "tests" / "data" / "invalid-stagingmerges.yaml").read_text())
)

pytestmark = pytest.mark.e2e
SPEC = {"main": {"uri": "/m"}, "staging": {"uri": "/s"}}


def body(name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StagingMerge",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def refusal(call) -> tuple[int, dict[str, object]]:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiException) as caught:
        call()
    return int(caught.value.status), json.loads(caught.value.body)


def test_writes_are_validated_defaulted_and_pruned_as_the_crd_says(
    control_plane: ControlPlane, namespace: str
) -> None:
    api = kubernetes.config.new_client_from_config(config_file=str(control_plane.admin))
    custom = kubernetes.client.CustomObjectsApi(api)

    def create(name: str, spec: dict[str, object], **options: str) -> dict[str, object]:
        created: dict[str, object] = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body(name, spec), **options
        )
        return created

    code, answer = refusal(lambda: create("a", {**SPEC, "x": 1}, field_validation="Strict"))
    assert code == 400 and 'unknown field "spec.x"' in str(answer["message"])
    code, answer = refusal(lambda: create("a", {**SPEC, "batchRows": 0}))
    assert code == 422 and answer["details"]["causes"][0]["field"] == "spec.batchRows"  # type: ignore[index]
    code, answer = refusal(lambda: create("a", {"main": {"uri": "/t"}, "staging": {"uri": "/t"}}))
    assert code == 422 and "must not be spec.main.uri" in str(answer["message"])  # CEL
    created = create("a", {**SPEC, "x": 1})
    spec = created["spec"]
    assert isinstance(spec, dict) and "x" not in spec  # pruned, as without Strict
    assert spec["batchRows"] == 250000 and spec["runPolicy"] == "Once"

    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "a", {"status": {"phase": "Running", "invented": True}}
    )
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a")
    assert stored["status"] == {"phase": "Running"}
    assert stored["metadata"]["generation"] == 1  # status writes do not move it
    code, _ = refusal(lambda: custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "a", {"status": {"phase": "Later"}}
    ))  # fmt: skip
    assert code == 422  # not in the phase enum
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "a", {"spec": {"batchRows": 10}}
    )
    moved = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a")
    assert moved["metadata"]["generation"] == 2


def test_what_kubectl_shows(kubectl: Cli, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(body("t", SPEC)))
    header, row = kubectl("get", "smerge", "-n", namespace).splitlines()
    assert header.split()[:3] == ["NAME", "MAIN", "STATUS"]
    assert row.split()[:2] == ["t", "/m"]
    assert "stagingmerges" in kubectl("api-resources", "--categories=stagingmerge")
    explained = kubectl("explain", "stagingmerge.spec.batchRows")
    assert "batchRows" in explained


def test_the_samples_are_accepted_and_every_bad_resource_refused(
    kubectl: Cli, namespace: str
) -> None:
    """Server-side dry runs: the real OpenAPI validation and CEL rules decide."""
    for sample in SAMPLES:
        for document in yaml.safe_load_all(sample.read_text()):
            document["metadata"]["namespace"] = namespace
            manifest = yaml.safe_dump(document)
            done = kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=manifest)
            assert done.returncode == 0, f"{sample.name}: {done.stderr}"
    for document in INVALID:
        done = kubectl.run("create", "--dry-run=server", "-n", namespace, "-f", "-",
                           stdin=json.dumps(body("x", document["spec"])))  # fmt: skip
        # 422 (schema, CEL), or 400 where kubectl's strict decoding meets an unknown field
        assert done.returncode != 0, document["expect"]
        assert "is invalid" in done.stderr or "strict decoding error" in done.stderr, done.stderr
