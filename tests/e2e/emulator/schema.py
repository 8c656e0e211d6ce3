"""What a real API server does with a custom object's body, from its CRD's structural schema.

On every create and update of a custom resource the apiextensions server
- fills in the schema's `default`s for absent fields of the objects present;
- prunes fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`),
  or, when the request asks `fieldValidation=Strict` (kubectl's default), refuses them (400);
- validates the pruned object against the openAPIV3Schema (`nullable`, int-or-string);
- evaluates the `x-kubernetes-validations` CEL rules where the object has the node.

`CrdSchema.admit` does all three and raises `UnknownFieldsError` (400) or
`InvalidObjectError` (422, the causes in the Status details that kubectl prints), worded
as the API server words them.
The status subresource goes through the same path, which is how a status field the CRD
forgot would vanish on a real cluster: the emulator drops it too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema


class InvalidObjectError(Exception):
    """The object is refused (HTTP 422): `status()` is the API server's Status body parts."""

    def __init__(self, kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> None:
        self.kind, self.group, self.name, self.causes = kind, group, name, causes
        listed = "; ".join(f"{field}: {message}" for field, message in causes)
        super().__init__(f'{kind}.{group} "{name}" is invalid: {listed}')

    def details(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "kind": self.kind,
            "causes": [
                {"reason": "FieldValueInvalid", "field": field, "message": message}
                for field, message in self.causes
            ],
        }


class UnknownFieldsError(Exception):
    """`fieldValidation=Strict` and the body has undeclared fields (HTTP 400, as the API says)."""


@dataclass(frozen=True)
class CrdSchema:
    kind: str
    group: str
    schema: dict[str, Any]

    @classmethod
    def from_crd(cls, crd: dict[str, Any], version: str) -> CrdSchema:
        for served in crd["spec"]["versions"]:
            if served["name"] == version:
                names = crd["spec"]["names"]
                return cls(names["kind"], crd["spec"]["group"], served["schema"]["openAPIV3Schema"])
        raise KeyError(version)

    def admit(self, obj: dict[str, Any], strict: bool = False) -> tuple[dict[str, Any], list[str]]:
        """The object as it would be stored (pruned, validated, CEL rules applied), and the
        fields pruning dropped."""
        unknown: list[str] = []
        pruned = prune(obj, self.schema, "", unknown, top=True)
        if strict and unknown:
            listed = ", ".join(f'unknown field "{_field(p)}"' for p in unknown)
            raise UnknownFieldsError(
                f'{self.kind} in version "{str(obj.get("apiVersion", "")).rpartition("/")[2]}" '
                f"cannot be handled as a {self.kind}: strict decoding error: {listed}"
            )
        causes: list[tuple[str, str]] = []
        validator = jsonschema.Draft7Validator(_jsonschema(self.schema))
        for error in sorted(validator.iter_errors(pruned), key=lambda e: list(e.absolute_path)):
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            causes.append((_field(path), f"Invalid value: {error.message}"))
        if not causes:
            causes = cel_errors(pruned, self.schema)
        if causes:
            name = str((obj.get("metadata") or {}).get("name", ""))
            raise InvalidObjectError(self.kind, self.group, name, causes)
        return pruned, [_field(p) for p in unknown]


def _field(path: str) -> str:
    return path.lstrip(".") or "<root>"


def prune(
    value: Any, schema: dict[str, Any], path: str, unknown: list[str], top: bool = False
) -> Any:
    """`value` without what `schema` does not declare; the dropped paths go to `unknown`."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or not isinstance(value, dict | list):
        return copy.deepcopy(value)
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [prune(v, items, f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    if isinstance(schema.get("additionalProperties"), dict):
        extra = schema["additionalProperties"]
        return {k: prune(v, extra, f"{path}.{k}", unknown) for k, v in value.items()}
    declared = schema.get("properties") or {}
    kept: dict[str, Any] = {}
    for key, child in value.items():
        if top and key in ("apiVersion", "kind", "metadata"):
            kept[key] = copy.deepcopy(child)  # ObjectMeta is the API server's, not the CRD's
        elif key in declared:
            kept[key] = prune(child, declared[key], f"{path}.{key}", unknown)
        else:
            unknown.append(f"{path}.{key}")
    for key, child in declared.items():
        if key not in kept and "default" in child:
            kept[key] = copy.deepcopy(child["default"])  # defaulting, as on every write
    return kept


def _jsonschema(node: Any) -> Any:
    """The structural schema as JSON Schema: `nullable` and int-or-string made explicit."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    result = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        result["type"] = ["integer", "string"]
    if result.pop("nullable", False) and "type" in result:
        types = result["type"] if isinstance(result["type"], list) else [result["type"]]
        result["type"] = [*types, "null"]
    if isinstance(result.get("properties"), dict):
        result["properties"] = {k: _jsonschema(v) for k, v in node["properties"].items()}
    return result


def cel_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(field, message) of every `x-kubernetes-validations` rule that `obj` breaks."""
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        environment = celpy.Environment()
        program = environment.program(environment.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(obj)}):
            errors.append((_field(path), f"Invalid value: {rule.get('message', rule['rule'])}"))
    if isinstance(obj, dict):
        for key, child in (schema.get("properties") or {}).items():
            if key in obj:
                errors += cel_errors(obj[key], child, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], f"{path}[{index}]")
    return errors
