"""The merge Job of a StagingMerge, as a plain dict (pure: unit-tested without a cluster)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from stagingmerge_merger.contract import (
    ALLOWED_PREFIXES_ENV,
    EXIT_INVALID,
    STORAGE_OPTIONS_ENV,
    TERMINATION_LOG,
)

from . import API_VERSION, KIND
from .config import OperatorConfig
from .spec import MergeSpec

CONTAINER = "merge"
MERGE_UID = 10001  # the user of merger/Dockerfile

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MERGE = "stagingmerge.io/merge"  # the StagingMerge's name
LABEL_GENERATION = "stagingmerge.io/generation"
LABEL_MAIN = "stagingmerge.io/main"  # hash of the main table URI (labels can't hold URIs)
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_MAIN_URI = "stagingmerge.io/main-uri"
MANAGED_BY = "stagingmerge-operator"
JOB_SELECTOR = {LABEL_MANAGED_BY: MANAGED_BY}

_NOT_DNS_LABEL = re.compile(r"[^a-z0-9-]")
LABEL_VALUE_MAX = 63


def main_key(main_uri: str) -> str:
    """A label-safe identity of a main table: at most one merge runs per key."""
    return hashlib.sha256(main_uri.rstrip("/").encode()).hexdigest()[:32]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def job_name(merge_name: str, generation: int) -> str:
    """`<name>-g<generation>`: a DNS label of at most 63 characters (the Job controller
    copies it into a label of every pod).

    A name that is not a DNS label as it stands (a dot, too long) gets a hash of the
    whole name appended, so two StagingMerges never share a Job: `a.b` and `a-b` give
    `a-b-<hash>-g1` and `a-b-g1`."""
    suffix = f"-g{generation}"
    if _NOT_DNS_LABEL.search(merge_name) is None and len(merge_name) + len(suffix) <= 63:
        return merge_name + suffix
    base = _NOT_DNS_LABEL.sub("-", merge_name.lower()).strip("-") or "merge"
    keep = 63 - len(suffix) - 9
    return f"{base[:keep].rstrip('-')}-{_digest(merge_name)}{suffix}"


def label_value(text: str) -> str:
    """`text` as a valid label value: as it is when it is one (a StagingMerge name of up
    to 63 characters always is), else cut and ended with a hash of the whole."""
    if len(text) <= LABEL_VALUE_MAX and re.fullmatch(LABEL_VALUE, text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: LABEL_VALUE_MAX - 9].rstrip("-_.")
    return f"{cleaned}-{_digest(text)}" if cleaned else _digest(text)


LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def merge_args(spec: MergeSpec) -> list[str]:
    args = [
        "--main",
        spec.main_uri,
        "--staging",
        spec.staging_uri,
        "--keys",
        ",".join(spec.keys),
        "--batch-rows",
        str(spec.batch_rows),
        "--log-format",
        "json",
    ]
    if spec.parallelism > 1:  # the shard's index: $JOB_COMPLETION_INDEX of its pod
        args += ["--shards", str(spec.parallelism)]
    if not spec.delete_staging:
        args.append("--keep-staging")
    if spec.dry_run:
        args.append("--dry-run")
    if spec.partition_by:
        args += ["--partition-by", ",".join(spec.partition_by)]
    if spec.first_by:
        args += ["--first-by", ",".join(spec.first_by)]
    return args


def _completions(spec: MergeSpec) -> dict[str, Any]:
    """One pod, or an Indexed Job of N shards that run at once, each retried on its own
    (backoffLimitPerIndex; the Job-wide backoffLimit then defaults to unlimited). A shard
    that fails for good leaves the others running: their spans are merged either way,
    and staging is only deleted once every shard succeeded."""
    if spec.parallelism <= 1:
        return {"backoffLimit": spec.backoff_limit}
    return {
        "completionMode": "Indexed",
        "completions": spec.parallelism,
        "parallelism": spec.parallelism,
        "backoffLimitPerIndex": spec.backoff_limit,
    }


def build_job(
    *,
    merge: Mapping[str, Any],
    spec: MergeSpec,
    config: OperatorConfig,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `stagingmerge-merge` for this generation of `merge`."""
    meta = merge["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], int(meta["generation"])
    labels = {
        LABEL_NAME: "stagingmerge",
        LABEL_COMPONENT: "merge",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MERGE: label_value(name),
        LABEL_GENERATION: str(generation),
        LABEL_MAIN: main_key(spec.main_uri),
    }
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[LABEL_QUEUE] = spec.queue_name
    env = [{"name": ALLOWED_PREFIXES_ENV, "value": config.allowed_prefixes}]
    if spec.storage_options:  # in the environment, not the arguments (`ps`, pod specs)
        env.append(
            {
                "name": STORAGE_OPTIONS_ENV,
                "value": json.dumps(dict(sorted(spec.storage_options.items()))),
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.default_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["stagingmerge-merge"],
        "args": merge_args(spec),
        "env": env,
        "terminationMessagePath": str(TERMINATION_LOG),
        "terminationMessagePolicy": "File",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # a writable /tmp on a read-only root file system
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    if spec.storage_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.storage_secret}}]
    container["resources"] = dict(spec.resources or config.default_resources)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are the Job's, so podFailurePolicy applies
        "automountServiceAccountToken": False,  # the merge never talks to the API
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        # the merge image's user; set here too, so a root image fails to start with a clear
        # reason instead of being refused by runAsNonRoot at CreateContainer
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": MERGE_UID,
            "runAsGroup": MERGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in config.image_pull_secrets]
    service_account = spec.service_account or (
        config.merge_service_account
        if not config.merge_service_account_namespaces
        or namespace in config.merge_service_account_namespaces
        else None
    )
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    job_spec: dict[str, Any] = {
        **_completions(spec),
        "podFailurePolicy": {
            "rules": [
                {  # bad input: retrying cannot help
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_INVALID],
                    },
                },
                {  # evictions, preemption, node drains: not the merge's fault
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.queue_name:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    job_spec["activeDeadlineSeconds"] = (
        spec.active_deadline_seconds
        if spec.active_deadline_seconds is not None
        else config.job_deadline_seconds
    )
    if config.job_ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = config.job_ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, generation),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {ANNOTATION_MAIN_URI: spec.main_uri},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec,
    }
