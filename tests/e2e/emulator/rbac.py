"""RBAC for the API emulator: the chart's Roles and ClusterRoles, as `helm template` renders
them, enforced on every request the operator makes, as kube-apiserver's RBAC authorizer
would; plus the OwnerReferencesPermissionEnforcement admission check (creating an object
whose ownerReference sets blockOwnerDeletion needs `update` on the owner's `finalizers`).

Requests carrying the operator's token are checked and recorded as (verb, group,
resource); a refusal is a 403 with kube-apiserver's wording. Requests without a token
are the tests' own (an administrator) and pass. Discovery (non-resource URLs) passes,
as the system:discovery role allows it to every authenticated user.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE, RELEASE_NAMESPACE = "sm", "stagingmerge"
OPERATOR = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-stagingmerge"

Grant = tuple[str, str, str]  # (verb, API group, resource[/subresource])


def render_chart(*values: str) -> list[dict[str, Any]]:
    """The chart's manifests as `helm template` renders them (tools/get_helm.py's helm)."""
    out = subprocess.run(
        [str(HELM), "template", RELEASE, str(ROOT / "charts" / "stagingmerge"),
         "--namespace", RELEASE_NAMESPACE, *values],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass
class Authorizer:
    """Who may do what, from Role/ClusterRole + bindings; what the operator did."""

    tokens: Mapping[str, str]  # bearer token -> user name
    cluster: dict[str, set[Grant]] = field(default_factory=dict)  # user -> grants everywhere
    namespaced: dict[tuple[str, str], set[Grant]] = field(default_factory=dict)
    used: set[Grant] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    @classmethod
    def from_manifests(
        cls, docs: Sequence[Mapping[str, Any]], tokens: Mapping[str, str]
    ) -> Authorizer:
        roles = {
            (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): _grants(d)
            for d in docs
            if d["kind"] in ("Role", "ClusterRole")
        }
        authorizer = cls(tokens)
        for binding in docs:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            namespace = binding["metadata"].get("namespace")
            ref = binding["roleRef"]
            role_namespace = namespace if ref["kind"] == "Role" else None
            grants = roles.get((ref["kind"], role_namespace, ref["name"]), set())
            for subject in binding.get("subjects") or []:
                user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
                if binding["kind"] == "ClusterRoleBinding":
                    authorizer.cluster.setdefault(user, set()).update(grants)
                else:
                    authorizer.namespaced.setdefault((user, namespace), set()).update(grants)
        return authorizer

    def granted(self, user: str = OPERATOR) -> set[Grant]:
        grants = set(self.cluster.get(user, set()))
        for (who, _), more in self.namespaced.items():
            if who == user:
                grants |= more
        return grants

    def allows(self, user: str, grant: Grant, namespace: str | None) -> bool:
        """As RBAC decides: a cluster role grants everywhere, a role in its namespace only;
        a request across all namespaces needs a cluster-wide grant."""
        if grant in self.cluster.get(user, set()):
            return True
        return namespace is not None and grant in self.namespaced.get((user, namespace), set())

    def check(self, user: str, grant: Grant, namespace: str | None) -> str | None:
        """None if allowed (and recorded), else kube-apiserver's Forbidden message."""
        if self.allows(user, grant, namespace):
            self.used.add(grant)
            return None
        verb, group, resource = grant
        plural, _, sub = resource.partition("/")
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        message = (
            f'{plural}{"." + group if group else ""} is forbidden: User "{user}" cannot {verb}'
            f' resource "{plural}"{f" subresource {sub!r}" if sub else ""} in API group'
            f' "{group}"{where}'
        )
        self.refused.append(message)
        return message


def _grants(role: Mapping[str, Any]) -> set[Grant]:
    found: set[Grant] = set()
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    found.add((verb, group, resource))
    return found


def unused(
    authorizer: Authorizer, user: str = OPERATOR, also_used: Iterable[Grant] = ()
) -> set[Grant]:
    return authorizer.granted(user) - authorizer.used - set(also_used)
