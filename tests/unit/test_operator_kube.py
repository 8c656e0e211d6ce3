"""Which API answers the operator reports as a refusal and which it retries."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from stagingmerge_operator.kube import _is_refusal


def _answer(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="reason")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(
    ("status", "message", "refusal"),
    [
        (422, 'Job.batch "m" is invalid: spec.template...', True),
        (403, 'jobs.batch is forbidden: User "system:serviceaccount:a:b" cannot create', True),
        (400, "bad request", True),
        # what kube-apiserver answers while its discovery cache does not know a CRD yet
        (
            403,
            'jobs.batch "m" is forbidden: cannot set blockOwnerDeletion in this case because'
            " cannot find RESTMapping for APIVersion stagingmerge.io/v1alpha1 Kind"
            ' StagingMerge: no matches for kind "StagingMerge" in version'
            ' "stagingmerge.io/v1alpha1"',
            False,
        ),
        (404, "not found", False),
        (409, "exists", False),
        (429, "storage is (re)initializing", False),
        (500, "internal", False),
        (503, "unavailable", False),
    ],
)
def test_refusal_or_retry(status: int, message: str, refusal: bool) -> None:
    assert _is_refusal(_answer(status, message)) is refusal


def test_a_body_that_is_not_json_is_judged_by_status() -> None:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = "<html>"
    assert _is_refusal(exc)
