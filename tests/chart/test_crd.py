"""The CRD: structural, its samples valid, bad resources refused by its schema. The CEL
rules, and every sample and refusal, are proven by the real API server in
tests/e2e/real/test_crd.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stagingmerge_merger import contract

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "stagingmerge.io_stagingmerges.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))
INVALID = list(
    yaml.safe_load_all((ROOT / "tests" / "data" / "invalid-stagingmerges.yaml").read_text())
)


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_names_and_scope():
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "stagingmerges.stagingmerge.io"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "stagingmerge.io",
        "Namespaced",
        "StagingMerge",
    )
    assert spec["names"]["shortNames"] == ["smerge"] and VERSION["name"] == "v1alpha1"
    assert VERSION["subresources"] == {"status": {}}
    # `kubectl get smerge -A` over hundreds of objects: main, phase, progress, inserted, age
    shown = [c["name"] for c in VERSION["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == ["Main", "Status", "Progress", "Inserted", "Age"]


def test_schema_is_structural():
    """Every node says its type (or is int-or-string / preserves unknown fields), and no
    node mixes properties with additionalProperties (Kubernetes' structural rules)."""
    for path, node in walk(SCHEMA):
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path} has no items schema"


def test_conditions_have_the_metav1_shape():
    item = SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_are_valid(sample):
    for document in yaml.safe_load_all(sample.read_text()):
        jsonschema.validate(document, SCHEMA)


@pytest.mark.parametrize("document", INVALID, ids=[d["expect"] for d in INVALID])
def test_bad_resources_are_refused(document):
    body = {
        "apiVersion": "stagingmerge.io/v1alpha1",
        "kind": "StagingMerge",
        "metadata": {"name": "x"},
        "spec": document["spec"],
    }
    schema_ok = jsonschema.Draft7Validator(SCHEMA).is_valid(body)
    # what the schema alone cannot refuse is a CEL rule's (the real server applies those)
    assert schema_ok == document["expect"].startswith("CEL")


def test_the_crd_defaults_are_the_contract_s():
    """The CRD's defaults and limits are the merge's own (stagingmerge_merger.contract), so
    a StagingMerge that leaves them out runs exactly as the CLI does."""
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert tuple(spec["keys"]["default"]) == contract.DEFAULT_KEYS
    assert spec["batchRows"]["default"] == contract.BATCH_ROWS
    assert spec["parallelism"]["maximum"] == contract.MAX_SHARDS


@pytest.mark.parametrize("name", ["cluster-cronjob.yaml", "index-cronjob.yaml"])
def test_the_chart_s_maintenance_jobs_speak_the_contract(name):
    template = (ROOT / "charts" / "stagingmerge" / "templates" / name).read_text()
    assert f'default "{",".join(contract.DEFAULT_KEYS)}"' in template
    assert f"name: {contract.STORAGE_OPTIONS_ENV}" in template
