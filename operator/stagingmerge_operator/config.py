"""Operator configuration: environment variables with the STAGINGMERGE_ prefix.

Parsed once at start-up; a bad value stops the operator with a one-line error
naming the variable, before it touches the cluster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.storage import parse_location

PREFIX = "STAGINGMERGE_"
# Sized for a 1 M-row CT staging merge (peak ~1.2 GiB, see the README's Performance).
DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "1", "memory": "1536Mi"},
    "limits": {"memory": "2Gi"},
}
# A finished Job must outlive the operator's next look at it, or its metrics are lost.
MIN_JOB_TTL_SECONDS = 60


class ConfigError(ValueError):
    """A STAGINGMERGE_* variable has a value the operator cannot use."""


@dataclass(frozen=True)
class OperatorConfig:
    default_image: str
    namespaces: tuple[str, ...]  # empty: every namespace (cluster-wide)
    merge_service_account: str  # default ServiceAccount of merge Jobs ("" = namespace default)
    allowed_prefixes: str  # STAGINGMERGE_ALLOWED_PREFIXES handed to every merge Job
    job_ttl_seconds: int | None  # default ttlSecondsAfterFinished of merge Jobs
    termination_grace_seconds: int  # time a merge gets to commit its batch after SIGTERM
    queue_poll_seconds: float  # how often queued merges look for their turn
    metrics_port: int  # Prometheus endpoint; 0 disables it
    liveness_port: int  # /healthz; 0 disables it
    log_format: str  # json | text | full (kopf's formats)
    api_timeout_seconds: float = 30.0  # per request of the reconciler
    # merge Jobs without their own: resources (never BestEffort) and a deadline (a pod that
    # cannot start must not hold its main table's queue forever)
    default_resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    job_deadline_seconds: int = 86_400
    image_pull_secrets: tuple[str, ...] = ()
    # a merge pod mounts no volume, so a local path is a mistake on a real cluster; the
    # end-to-end tests (whose job runner runs merges on this machine) allow them
    allow_local_paths: bool = False
    # where merge_service_account exists (the chart creates it in the release namespace and
    # each watched one); elsewhere merge pods run as the namespace's default account, since
    # a pod naming a missing ServiceAccount is refused and its Job never starts. Empty: all.
    merge_service_account_namespaces: tuple[str, ...] = ()
    # the namespace of the leader's Lease (the operator's own); "" runs without one
    leader_namespace: str = ""
    leader_lease_seconds: float = 15.0
    # merges (Jobs) running at once into one main table; above 1 they rely on the merge's
    # concurrent-writer guard (catch-up before each commit, repair after)
    max_concurrent_per_main: int = 1

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def load(environ: Mapping[str, str] = os.environ) -> OperatorConfig:
    def get(name: str, default: str) -> str:
        return environ.get(PREFIX + name, default).strip()

    def integer(name: str, default: int, minimum: int = 0) -> int:
        raw = get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{PREFIX}{name} must be at least {minimum}, got {value}")
        return value

    def positive_number(name: str, default: float) -> float:
        raw = get(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"{PREFIX}{name} must be positive, got {raw!r}")
        return value

    image = get("DEFAULT_IMAGE", "")
    if not image:
        raise ConfigError(
            f"{PREFIX}DEFAULT_IMAGE must name the merge image (e.g. "
            "ghcr.io/stagingmerge/merge:0.1.0)"
        )
    log_format = get("LOG_FORMAT", "json")
    if log_format not in ("json", "text", "full"):
        raise ConfigError(f"{PREFIX}LOG_FORMAT must be json, text or full, got {log_format!r}")
    ttl = get("JOB_TTL_SECONDS", "")
    prefixes = get("ALLOWED_PREFIXES", "")
    for prefix in filter(None, (p.strip() for p in prefixes.split(","))):
        try:
            parse_location(prefix)
        except InvalidInputError as exc:
            raise ConfigError(f"{PREFIX}ALLOWED_PREFIXES: {exc}") from None
    return OperatorConfig(
        default_image=image,
        namespaces=tuple(n.strip() for n in get("NAMESPACES", "").split(",") if n.strip()),
        merge_service_account=get("MERGE_SERVICE_ACCOUNT", ""),
        allowed_prefixes=prefixes,
        job_ttl_seconds=integer("JOB_TTL_SECONDS", 0, minimum=MIN_JOB_TTL_SECONDS) if ttl else None,
        termination_grace_seconds=integer("TERMINATION_GRACE_SECONDS", 300, minimum=1),
        queue_poll_seconds=positive_number("QUEUE_POLL_SECONDS", 15),
        metrics_port=integer("METRICS_PORT", 9090),
        liveness_port=integer("LIVENESS_PORT", 8080),
        log_format=log_format,
        api_timeout_seconds=positive_number("API_TIMEOUT_SECONDS", 30),
        default_resources=_resources(get("DEFAULT_RESOURCES", "")),
        job_deadline_seconds=integer("JOB_DEADLINE_SECONDS", 86_400, minimum=1),
        allow_local_paths=get("ALLOW_LOCAL_PATHS", "false").lower() in ("1", "true", "yes"),
        leader_namespace=get("LEADER_ELECTION_NAMESPACE", ""),
        leader_lease_seconds=positive_number("LEADER_LEASE_SECONDS", 15),
        max_concurrent_per_main=integer("MAX_CONCURRENT_PER_MAIN", 1, minimum=1),
        merge_service_account_namespaces=tuple(
            n.strip() for n in get("MERGE_SERVICE_ACCOUNT_NAMESPACES", "").split(",") if n.strip()
        ),
        image_pull_secrets=tuple(
            n.strip() for n in get("MERGE_IMAGE_PULL_SECRETS", "").split(",") if n.strip()
        ),
    )


def _resources(raw: str) -> Mapping[str, Any]:
    """STAGINGMERGE_DEFAULT_RESOURCES: the merge container's resources as JSON."""
    if not raw:
        return dict(DEFAULT_RESOURCES)
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}DEFAULT_RESOURCES is not JSON: {raw!r}") from None
    if not isinstance(value, dict) or set(value) - {"requests", "limits"}:
        raise ConfigError(f"{PREFIX}DEFAULT_RESOURCES must be an object of requests and limits")
    return value
