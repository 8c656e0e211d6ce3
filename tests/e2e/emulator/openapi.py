"""OpenAPI v3 for the custom resources, as the API server publishes it for a CRD.

kubectl fetches `/openapi/v3` (an index of group-version documents) and the document of
the object's group-version before `apply`/`create`: it validates on the server when the
PATCH operation declares the `fieldValidation` query parameter (then it sends
`fieldValidation=Strict` and the emulator refuses unknown fields, tests/e2e/emulator/schema.py),
and it reads the schema for `kubectl explain`. Only what kubectl reads is published: the
schema with its group-version-kind, and the operations with their query parameters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

QUERY_PARAMETERS = ["dryRun", "fieldManager", "fieldValidation"]


def schema_name(group: str, version: str, kind: str) -> str:
    return ".".join([*reversed(group.split(".")), version, kind])


def document(crd: dict[str, Any], version: str) -> dict[str, Any]:
    spec = crd["spec"]
    group, names = spec["group"], spec["names"]
    served = next(v for v in spec["versions"] if v["name"] == version)
    gvk = [{"group": group, "version": version, "kind": names["kind"]}]
    ref = {"$ref": f"#/components/schemas/{schema_name(group, version, names['kind'])}"}
    body = {"content": {"application/json": {"schema": ref}}}
    parameters = [
        {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for name in QUERY_PARAMETERS
    ]
    operation = {
        "parameters": parameters,
        "requestBody": body,
        "responses": {"200": body},
        "x-kubernetes-group-version-kind": gvk[0],
    }
    namespaced = spec["scope"] == "Namespaced"
    base = f"/apis/{group}/{version}" + ("/namespaces/{namespace}" if namespaced else "")
    schema = dict(served["schema"]["openAPIV3Schema"])
    schema["x-kubernetes-group-version-kind"] = gvk
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": {
            f"{base}/{names['plural']}": {
                "get": {**operation, "x-kubernetes-action": "list"},
                "post": {**operation, "x-kubernetes-action": "post"},
            },
            f"{base}/{names['plural']}/{{name}}": {
                "get": {**operation, "x-kubernetes-action": "get"},
                "put": {**operation, "x-kubernetes-action": "put"},
                "patch": {**operation, "x-kubernetes-action": "patch"},
                "delete": {**operation, "x-kubernetes-action": "delete"},
            },
        },
        "components": {"schemas": {schema_name(group, version, names["kind"]): schema}},
    }


def index(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`/openapi/v3`: each group-version's document, addressed with its content hash."""
    return {
        "paths": {
            path: {
                "serverRelativeURL": f"/openapi/v3/{path}?hash="
                + hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128]
            }
            for path, doc in documents.items()
        }
    }
