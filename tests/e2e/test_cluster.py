"""The test API server itself (tests/e2e/emulator/cluster.py): what it adds to kmock, checked."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.emulator import jobrunner
from tests.e2e.emulator.cluster import OPERATOR_TOKEN, matches_fields, matches_selector, merge_diff
from tests.e2e.emulator.printing import human_duration

pytestmark = pytest.mark.e2e
SPEC = {"main": {"uri": "/m"}, "staging": {"uri": "/s"}}


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
            "spec": SPEC,
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
    kubectl.apply("b", SPEC)
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
    created = kubectl.apply("c", SPEC)
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
    owner = kubectl.apply("d", SPEC)
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
            "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
        },
    )
    kubectl.batch.create_namespaced_job(
        "default",
        {
            "metadata": {"name": "other", "labels": {"x": "2"}},
            "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
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


# --- what kubectl and a real API server's validation add ---------------------------------

BASE = "/apis/stagingmerge.io/v1alpha1"


def http(cluster, method, path, body=None, headers=None, token=None):
    """One raw request; (status, JSON body)."""
    request = urllib.request.Request(
        cluster.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/merge-patch+json"
            if method == "PATCH"
            else "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def body(name, spec):
    return {
        "apiVersion": "stagingmerge.io/v1alpha1",
        "kind": "StagingMerge",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_writes_are_validated_and_pruned_as_the_crd_says(cluster):
    path = f"{BASE}/namespaces/default/stagingmerges"
    code, answer = http(
        cluster, "POST", path + "?fieldValidation=Strict", body("a", {**SPEC, "x": 1})
    )
    assert code == 400 and 'unknown field "spec.x"' in answer["message"]
    code, answer = http(cluster, "POST", path, body("a", {**SPEC, "batchRows": 0}))
    assert code == 422 and answer["details"]["causes"][0]["field"] == "spec.batchRows"
    code, answer = http(
        cluster, "POST", path, body("a", {"main": {"uri": "/t"}, "staging": {"uri": "/t"}})
    )
    assert code == 422 and "must not be spec.main.uri" in answer["message"]  # a CEL rule
    code, created = http(cluster, "POST", path, body("a", {**SPEC, "x": 1}))
    assert code == 201 and "x" not in created["spec"]  # pruned, as without Strict
    assert created["spec"]["batchRows"] == 250000 and created["spec"]["runPolicy"] == "Once"
    assert cluster.emulator.pruned == []  # the tests' own requests are not the operator's
    code, _ = http(
        cluster,
        "PATCH",
        f"{path}/a/status",
        {"status": {"phase": "Running", "invented": True}},
        token=OPERATOR_TOKEN,
    )
    stored = http(cluster, "GET", f"{path}/a")[1]
    assert code == 200 and stored["status"] == {"phase": "Running"}
    assert cluster.emulator.pruned == [f"PATCH {path}/a/status: status.invented"]
    cluster.emulator.pruned.clear()  # seen: the fixture's own check must not fail this test
    code, _ = http(cluster, "PATCH", f"{path}/a/status", {"status": {"phase": "Later"}})
    assert code == 422  # not in the phase enum


def test_what_kubectl_reads(cluster, kubectl):
    kubectl.apply("t", SPEC)
    path = f"{BASE}/namespaces/default/stagingmerges"
    assert http(cluster, "GET", path)[1]["kind"] == "StagingMergeList"
    table_accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    _, table = http(cluster, "GET", path, headers=table_accept)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Main", "Status"]
    cells = table["rows"][0]["cells"]
    assert cells[0] == "t" and cells[1] == SPEC["main"]["uri"] and cells[2] is None
    assert cells[5].endswith("s")  # age, not a stamp
    resources = http(cluster, "GET", BASE)[1]["resources"]
    main = next(r for r in resources if r["name"] == "stagingmerges")
    status = next(r for r in resources if r["name"] == "stagingmerges/status")
    assert main["shortNames"] == ["smerge"] and "stagingmerge" in main["categories"]
    assert status["shortNames"] == [] and status["verbs"] == ["get", "patch", "update"]
    index = http(cluster, "GET", "/openapi/v3")[1]["paths"]
    document = http(cluster, "GET", index["apis/stagingmerge.io/v1alpha1"]["serverRelativeURL"])[1]
    patch = document["paths"][path.replace("default", "{namespace}") + "/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    kubectl.core.create_namespaced_event(
        "default", {"metadata": {"name": "e1"}, "involvedObject": {"name": "t"}, "reason": "R"}
    )
    kubectl.core.create_namespaced_event(
        "default", {"metadata": {"name": "e2"}, "involvedObject": {"name": "u"}, "reason": "R"}
    )
    selected = kubectl.core.list_namespaced_event(
        "default", field_selector="involvedObject.name=t,reason=R"
    )
    assert [e.metadata.name for e in selected.items] == ["e1"]


def test_a_streaming_list_ends_its_initial_events_with_a_bookmark(cluster, kubectl):
    kubectl.apply("w", SPEC)
    url = (
        f"{cluster.url}{BASE}/namespaces/default/stagingmerges?watch=true&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    )
    with urllib.request.urlopen(url, timeout=30) as stream:
        first, second = json.loads(stream.readline()), json.loads(stream.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "w")
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_field_selectors_and_ages():
    event = {"involvedObject": {"name": "a", "kind": "K"}, "type": "Normal"}
    assert matches_fields(event, "involvedObject.name=a,involvedObject.kind==K")
    assert not matches_fields(event, "type!=Normal") and matches_fields(event, "reason!=X")
    assert [human_duration(s) for s in (5, 119, 150, 600, 7200, 90000, 86400 * 30)] == [
        "5s",
        "119s",
        "2m30s",
        "10m",
        "120m",
        "25h",
        "30d",
    ]


def test_jobs_are_validated_as_the_batch_api_does(kubectl):
    """422 for what the API server's Job validation refuses (emulator/batch.py)."""
    pod = {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}
    bad = [
        ({"backoffLimitPerIndex": 1, "template": {"spec": pod}}, "requires indexed completion"),
        ({"completionMode": "Indexed", "template": {"spec": pod}}, "spec.completions"),
        ({"template": {"spec": {**pod, "restartPolicy": "Always"}}}, "restartPolicy"),
        (
            {
                "podFailurePolicy": {"rules": [{"action": "FailIndex", "onExitCodes": {}}]},
                "template": {"spec": pod},
            },
            "requires the backoffLimitPerIndex",
        ),
    ]
    for number, (spec, message) in enumerate(bad):
        with pytest.raises(ApiException) as refused:
            kubectl.batch.create_namespaced_job(
                "default", {"metadata": {"name": f"bad-{number}"}, "spec": spec}
            )
        assert refused.value.status == 422 and message in refused.value.body
    indexed = {
        "completionMode": "Indexed",
        "completions": 3,
        "parallelism": 3,
        "backoffLimitPerIndex": 1,
        "template": {"spec": pod},
    }
    kubectl.batch.create_namespaced_job("default", {"metadata": {"name": "ok"}, "spec": indexed})
    assert [j["metadata"]["name"] for j in kubectl.jobs()] == ["ok"]


def test_job_status_index_intervals():
    assert jobrunner._ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert jobrunner._ranges(set()) == "" and jobrunner._ranges({4}) == "4"
