"""The chart's optional ValidatingAdmissionPolicy, enforced by the real API server: a
StagingMerge naming an image, ServiceAccount or Secret the platform team did not allow
is refused when it is applied; one within the rules is admitted and merges."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.harness import GROUP, PLURAL, VERSION, Kubectl, Release, spec_for, wait_for
from tests.helpers import ct, key_list, write

pytestmark = pytest.mark.e2e


def refused(kubectl: Kubectl, spec: dict[str, object]) -> str | None:
    """The API server's refusal of a server-side dry run of `spec`, or None if admitted."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StagingMerge",
            "metadata": {"name": "probe"}, "spec": spec}  # fmt: skip
    try:
        kubectl.custom.create_namespaced_custom_object(
            GROUP, VERSION, kubectl.namespace, PLURAL, body, dry_run="All"
        )
    except ApiException as exc:
        assert exc.status == 403, exc.body
        return str(json.loads(exc.body)["message"])
    return None


def test_the_policy_refuses_what_is_not_allowed(
    install_operator: Callable[..., Release], kubectl: Kubectl, tmp_path
) -> None:
    install_operator(
        "--set", "admissionPolicy.enabled=true",
        "--set-json", 'admissionPolicy.allowedImagePrefixes=["ghcr.io/stagingmerge/merge:"]',
        "--set-json", 'admissionPolicy.allowedServiceAccounts=["stagingmerge-merge"]',
        "--set-json", 'admissionPolicy.allowedSecretNames=["lake-credentials"]',
    )  # fmt: skip
    main, staging = tmp_path / "main", tmp_path / "staging"
    base = spec_for(main, staging)
    # the API server compiles a new policy in the background: wait until it bites
    wait_for(lambda: refused(kubectl, {**base, "image": "evil.example/merge:1"}),
             what="the policy enforced")  # fmt: skip

    image = refused(kubectl, {**base, "image": "evil.example/merge:1"})
    assert image is not None and "spec.image evil.example/merge:1 is not allowed" in image
    account = refused(kubectl, {**base, "serviceAccountName": "default"})
    assert account is not None and "spec.serviceAccountName default is not allowed" in account
    secret = refused(kubectl, {**base, "storageSecretRef": {"name": "admin-keys"}})
    assert secret is not None and "use one of lake-credentials" in secret
    assert kubectl.get("probe") is None

    write(main, ct([0] * 2, range(2), seed=1))
    write(staging, ct([0] * 3, range(1, 4), seed=2))
    kubectl.secret("lake-credentials", {"AWS_REGION": "eu-west-1"})
    allowed = {
        **base,
        "image": "ghcr.io/stagingmerge/merge:0.1.0",
        "serviceAccountName": "stagingmerge-merge",
        "storageSecretRef": {"name": "lake-credentials"},
    }
    assert refused(kubectl, allowed) is None
    kubectl.apply("allowed", allowed)
    assert kubectl.wait("allowed", "True")["reason"] == "Merged"
    assert len(key_list(main)) == 4
