"""The test API server itself (tests/e2e/cluster.py): what it adds to kmock, checked."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.cluster import matches_selector, merge_diff

pytestmark = pytest.mark.e2e


def test_create_assigns_identity_and_answers_201(kubectl):
    _, status, _ = kubectl.custom.create_namespaced_custom_object_with_http_info(
        "stagingmerge.io",
        "v1alpha1",
        "default",
        "stagingmerges",
        {
            "apiVersion": "stagingmerge.io/v1alpha1",
            "kind": "StagingMerge",
            "metadata": {"name": "a"},
            "spec": {"main": {"uri": "/m"}},
        },
    )
    merge = kubectl.get("a")
    meta = merge["metadata"]
    assert status == 201
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    assert meta["namespace"] == "default" and meta["creationTimestamp"]
    event = kubectl.core.create_namespaced_event(
        "default",
        {"metadata": {"generateName": "a."}, "involvedObject": {"name": "a"}, "reason": "R"},
    )
    assert event.metadata.name.startswith("a.") and len(event.metadata.name) > 2


def test_generation_moves_with_the_spec_and_status_is_a_subresource(kubectl):
    kubectl.apply("b", {"main": {"uri": "/m"}})
    kubectl.custom.patch_namespaced_custom_object_status(
        "stagingmerge.io",
        "v1alpha1",
        "default",
        "stagingmerges",
        "b",
        {"status": {"phase": "Running"}, "spec": {"main": {"uri": "/ignored"}}},
    )
    after_status = kubectl.get("b")
    assert after_status["metadata"]["generation"] == 1
    assert after_status["spec"]["main"]["uri"] == "/m"
    assert after_status["status"]["phase"] == "Running"
    kubectl.patch_spec("b", {"batchRows": 5})
    kubectl.custom.patch_namespaced_custom_object(
        "stagingmerge.io",
        "v1alpha1",
        "default",
        "stagingmerges",
        "b",
        {"status": {"phase": "Ignored"}},
    )
    after_spec = kubectl.get("b")
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["status"]["phase"] == "Running"
    assert int(after_spec["metadata"]["resourceVersion"]) > int(
        after_status["metadata"]["resourceVersion"]
    )


def test_stale_resource_versions_are_refused(kubectl):
    created = kubectl.apply("c", {"main": {"uri": "/m"}})
    stale = created["metadata"]["resourceVersion"]
    kubectl.patch_spec("c", {"batchRows": 1})
    with pytest.raises(ApiException) as info:
        kubectl.custom.patch_namespaced_custom_object_status(
            "stagingmerge.io",
            "v1alpha1",
            "default",
            "stagingmerges",
            "c",
            {"metadata": {"resourceVersion": stale}, "status": {"phase": "x"}},
        )
    assert info.value.status == 409


def test_owned_objects_are_garbage_collected(kubectl):
    owner = kubectl.apply("d", {"main": {"uri": "/m"}})
    kubectl.batch.create_namespaced_job(
        "default",
        {
            "metadata": {
                "name": "d-g1",
                "labels": {"x": "1"},
                "ownerReferences": [
                    {
                        "apiVersion": "stagingmerge.io/v1alpha1",
                        "kind": "StagingMerge",
                        "name": "d",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
            "spec": {"template": {"spec": {"containers": []}}},
        },
    )
    kubectl.batch.create_namespaced_job(
        "default",
        {
            "metadata": {"name": "other", "labels": {"x": "2"}},
            "spec": {"template": {"spec": {"containers": []}}},
        },
    )
    selected = kubectl.batch.list_namespaced_job("default", label_selector="x=1").items
    assert [j.metadata.name for j in selected] == ["d-g1"]
    kubectl.delete("d")
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["other"]


def test_selectors_and_merge_diffs():
    assert matches_selector({"a": "1", "b": "2"}, "a=1,b==2")
    assert not matches_selector({"a": "1"}, "a!=1")
    assert matches_selector({"a": "1"}, "a,!b") and not matches_selector({}, "a")
    assert merge_diff({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1, "d": 3}, "e": [1]}) == {
        "a": None,
        "b": {"d": 3},
        "e": [1],
    }
