"""What the API server's batch/v1 validation refuses in a Job, for the fields merge Jobs use
(k8s.io/kubernetes pkg/apis/batch/validation): 422 with the field path, as a real server
answers, instead of storing a Job no Job controller would run."""

from __future__ import annotations

from typing import Any

MAX_INDEXED_COMPLETIONS = 100_000


def job_errors(job: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, reason) of every rule the Job breaks."""
    spec = job.get("spec") or {}
    errors: list[tuple[str, str]] = []
    mode = spec.get("completionMode", "NonIndexed")
    indexed = mode == "Indexed"
    if mode not in ("NonIndexed", "Indexed"):
        errors.append(("spec.completionMode", 'supported values: "NonIndexed", "Indexed"'))
    for name in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(name)
        if value is not None and (not isinstance(value, int) or value < 0):
            errors.append((f"spec.{name}", "must be greater than or equal to 0"))
    if indexed:
        if spec.get("completions") is None:
            errors.append(("spec.completions", "when completion mode is Indexed: Required value"))
        elif spec["completions"] > MAX_INDEXED_COMPLETIONS:
            errors.append(
                (
                    "spec.completions",
                    f"must be less than or equal to {MAX_INDEXED_COMPLETIONS}"
                    " when completion mode is Indexed",
                )
            )
    per_index = spec.get("backoffLimitPerIndex")
    if per_index is not None:
        if not indexed:
            errors.append(("spec.backoffLimitPerIndex", "requires indexed completion mode"))
        if not isinstance(per_index, int) or per_index < 0:
            errors.append(("spec.backoffLimitPerIndex", "must be greater than or equal to 0"))
    if spec.get("maxFailedIndexes") is not None and per_index is None:
        errors.append(("spec.maxFailedIndexes", "requires the backoffLimitPerIndex to be set"))
    pod = (spec.get("template") or {}).get("spec") or {}
    restart = pod.get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        errors.append(
            ("spec.template.spec.restartPolicy", 'supported values: "OnFailure", "Never"')
        )
    rules = (spec.get("podFailurePolicy") or {}).get("rules")
    if rules is not None:
        if restart != "Never":
            errors.append(
                (
                    "spec.podFailurePolicy",
                    'only "Never" is supported when podFailurePolicy is specified',
                )
            )
        for number, rule in enumerate(rules):
            action = rule.get("action")
            where = f"spec.podFailurePolicy.rules[{number}].action"
            if action not in ("FailJob", "FailIndex", "Ignore", "Count"):
                errors.append(
                    (where, 'supported values: "Count", "FailIndex", "FailJob", "Ignore"')
                )
            if action == "FailIndex" and per_index is None:
                errors.append((where, "requires the backoffLimitPerIndex to be set"))
    return errors


def refusal(job: dict[str, Any]) -> str | None:
    """The API server's message for an invalid Job, or None."""
    errors = job_errors(job)
    if not errors:
        return None
    name = (job.get("metadata") or {}).get("name")
    causes = ", ".join(f"{path}: Invalid value: {why}" for path, why in errors)
    return f'Job.batch "{name}" is invalid: [{causes}]'
