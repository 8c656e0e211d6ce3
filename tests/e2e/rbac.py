"""Least privilege from the real API server's audit log: what the chart's Roles and
ClusterRoles grant one ServiceAccount, and what that account was seen to do.

Pure functions over `helm get manifest` documents and audit events; the test
(test_least_privilege.py) decides what must hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Grant = tuple[str, str, str]  # (verb, API group, resource[/subresource])
Use = tuple[str, str, str, str | None]  # a Grant used in a namespace (None: cluster scope)


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _grants(role: Mapping[str, Any]) -> set[Grant]:
    found: set[Grant] = set()
    for rule in role.get("rules") or []:
        assert not rule.get("resourceNames"), "resourceNames are not modelled here"
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    found.add((verb, group, resource))
    return found


def granted(docs: Iterable[Mapping[str, Any]], user: str) -> dict[Grant, set[str | None]]:
    """Each grant `user` holds, with where it holds: None (every namespace, a
    ClusterRoleBinding) or the namespaces of its RoleBindings."""
    docs = [d for d in docs if d]
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): _grants(d)
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    scopes: dict[Grant, set[str | None]] = {}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects") or []
        if not any(service_account_user(s["namespace"], s["name"]) == user for s in subjects):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role_namespace = namespace if ref["kind"] == "Role" else None
        scope = None if binding["kind"] == "ClusterRoleBinding" else namespace
        for grant in roles.get((ref["kind"], role_namespace, ref["name"]), set()):
            scopes.setdefault(grant, set()).add(scope)
    return scopes


def uses(events: Iterable[Mapping[str, Any]], user: str) -> tuple[set[Use], list[str]]:
    """The resource requests `user` made (verb, group, resource[/subresource], namespace)
    and, separately, those the server refused (403), as one line each."""
    used: set[Use] = set()
    refused: list[str] = []
    for event in events:
        ref = event.get("objectRef")
        if event["user"]["username"] != user or not ref or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        use = (event["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace"))
        if (event.get("responseStatus") or {}).get("code") == 403:
            refused.append(f"{event['verb']} {event['requestURI']}")
        else:
            used.add(use)
    return used, refused


def unused(grants: Mapping[Grant, set[str | None]], used: Iterable[Use]) -> set[Grant]:
    """Grants no request needed: used neither in a namespace the grant covers nor, for a
    cluster-wide grant, anywhere."""
    spent: set[Grant] = set()
    for verb, group, resource, namespace in used:
        scopes = grants.get((verb, group, resource), set())
        if None in scopes or namespace in scopes:
            spent.add((verb, group, resource))
    return set(grants) - spent
