"""A StagingMerge's spec, parsed and validated (pure: no API calls).

The CRD's OpenAPI schema and CEL rule catch most mistakes at `kubectl apply`;
this module checks again (API servers without validation, old objects) and adds
what a schema cannot say: that the URIs parse and do not overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagingmerge_merger import contract, parsing
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.storage import is_secret_name, parse_location

from . import admission

RUN_ONCE = "Once"
RUN_ON_SPEC_CHANGE = "OnSpecChange"
DEFAULT_BACKOFF_LIMIT = 3


class InvalidSpecError(ValueError):
    """The spec can never be merged as written; the message says what to change."""


@dataclass(frozen=True)
class MergeSpec:
    main_uri: str
    staging_uri: str
    keys: tuple[str, ...] = contract.DEFAULT_KEYS
    batch_rows: int = contract.BATCH_ROWS
    delete_staging: bool = True
    dry_run: bool = False
    storage_secret: str | None = None
    storage_options: Mapping[str, str] = field(default_factory=dict)
    partition_by: tuple[str, ...] = ()
    first_by: tuple[str, ...] = ()
    image: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    service_account: str | None = None
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None  # of this StagingMerge, not only its Job
    parallelism: int = 1  # shards: an Indexed Job of this many pods
    suspend: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    queue_name: str | None = None
    run_policy: str = RUN_ONCE


def parse_spec(spec: Mapping[str, Any]) -> MergeSpec:
    """Turn `spec` into a MergeSpec, or raise InvalidSpecError with one actionable line."""
    main_uri = _uri(spec, "main")
    staging_uri = _uri(spec, "staging")
    try:
        main, staging = parse_location(main_uri), parse_location(staging_uri)
        keys = parsing.parse_keys(",".join(spec.get("keys") or contract.DEFAULT_KEYS))
    except InvalidInputError as exc:
        raise InvalidSpecError(str(exc)) from None
    if main.overlaps(staging):
        raise InvalidSpecError(
            f"spec.staging.uri {staging_uri} and spec.main.uri {main_uri} are the same"
            " location or one is inside the other"
        )
    secret = spec.get("storageSecretRef") or {}
    run_policy = spec.get("runPolicy", RUN_ONCE)
    if run_policy not in (RUN_ONCE, RUN_ON_SPEC_CHANGE):
        raise InvalidSpecError(
            f"spec.runPolicy must be {RUN_ONCE} or {RUN_ON_SPEC_CHANGE}, got {run_policy!r}"
        )
    options = spec.get("storageOptions") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise InvalidSpecError("spec.storageOptions must map strings to strings")
    credentials = sorted(k for k in options if is_secret_name(k))
    if credentials:
        raise InvalidSpecError(
            f"spec.storageOptions holds credentials ({', '.join(credentials)}): anyone who can read"
            " the StagingMerge, its Job or its pod would see them; put them in the Secret named"
            " by spec.storageSecretRef instead"
        )
    result = MergeSpec(
        main_uri=main_uri,
        staging_uri=staging_uri,
        keys=keys,
        batch_rows=_integer_or(spec, "batchRows", 1, contract.BATCH_ROWS),
        delete_staging=bool(spec.get("deleteStaging", True)),
        dry_run=bool(spec.get("dryRun", False)),
        storage_secret=secret.get("name") or None,
        storage_options=dict(options),
        partition_by=tuple(spec.get("partitionBy") or ()),
        first_by=tuple(spec.get("firstBy") or ()),
        image=spec.get("image") or None,
        resources=dict(spec.get("resources") or {}),
        service_account=spec.get("serviceAccountName") or None,
        backoff_limit=_integer_or(spec, "backoffLimit", 0, DEFAULT_BACKOFF_LIMIT),
        active_deadline_seconds=_integer(spec, "activeDeadlineSeconds", 1),
        ttl_seconds_after_finished=_integer(spec, "ttlSecondsAfterFinished", 0),
        parallelism=_integer_or(spec, "parallelism", 1, 1),
        suspend=bool(spec.get("suspend", False)),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=tuple(spec.get("tolerations") or ()),
        queue_name=spec.get("queueName") or None,
        run_policy=run_policy,
    )
    if result.parallelism > contract.MAX_SHARDS:
        raise InvalidSpecError(
            f"spec.parallelism must be at most {contract.MAX_SHARDS}, got {result.parallelism}"
        )
    try:
        _admit(result)
    except admission.RefusedField as exc:
        raise InvalidSpecError(str(exc)) from None
    return result


def _admit(spec: MergeSpec) -> None:
    """What the API server would refuse in the Job this spec becomes (admission.py)."""
    if spec.image is not None:
        admission.image(spec.image, "spec.image")
    if spec.service_account is not None:
        admission.dns_subdomain(spec.service_account, "spec.serviceAccountName")
    if spec.storage_secret is not None:
        admission.dns_subdomain(spec.storage_secret, "spec.storageSecretRef.name")
    if spec.queue_name is not None:
        admission.label_value(spec.queue_name, "spec.queueName")
    for key, value in spec.node_selector.items():
        admission.qualified_name(key, "spec.nodeSelector key")
        admission.label_value(str(value), f"spec.nodeSelector.{key}")
    for number, toleration in enumerate(spec.tolerations):
        admission.toleration(toleration, f"spec.tolerations[{number}]")
    admission.resources(spec.resources, "spec.resources")


def check_object_storage(spec: MergeSpec) -> None:
    """Refuse local paths: the merge pod has no volume to find them on."""
    for name, uri in (("spec.main.uri", spec.main_uri), ("spec.staging.uri", spec.staging_uri)):
        if parse_location(uri).is_local:
            raise InvalidSpecError(
                f"{name} {uri} is a local path, which a merge pod cannot reach (it mounts no"
                " volume); use an object-store URI (s3://, gs://, az://)"
            )


def _uri(spec: Mapping[str, Any], name: str) -> str:
    value = (spec.get(name) or {}).get("uri")
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpecError(f"spec.{name}.uri is required (a table URI such as s3://bucket/t)")
    return value.strip()


def _integer(spec: Mapping[str, Any], name: str, minimum: int) -> int | None:
    """spec[name] as a whole number of at least `minimum`, or None when absent."""
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(f"spec.{name} must be a whole number, got {value!r}")
    if value < minimum:
        rule = {0: "must not be negative", 1: "must be positive"}.get(
            minimum, f"must be at least {minimum}"
        )
        raise InvalidSpecError(f"spec.{name} {rule}, got {value}")
    return value


def _integer_or(spec: Mapping[str, Any], name: str, minimum: int, default: int) -> int:
    value = _integer(spec, name, minimum)
    return default if value is None else value
