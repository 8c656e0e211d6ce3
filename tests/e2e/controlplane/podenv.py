"""What a kubelet gives a container before it starts, as pure functions: the environment
(env, envFrom, the downward API, `$(VAR)` references, the in-cluster variables) and the
command (the container's own, or its image's ENTRYPOINT as this project's Dockerfiles
declare it). The node agent does the I/O; these only compute."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
# image repository (its last two path parts) -> the Dockerfile that builds it
IMAGES = {"stagingmerge/operator": "operator/Dockerfile", "stagingmerge/merge": "merger/Dockerfile"}
# images whose containers must name a command, run from this machine's PATH: the tests'
# probes of the node agent itself (`sh -c ...`)
HOST_IMAGES = {"busybox"}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
# Lookup(kind, name, key) -> value or None; kind is "secret" or "configmap"; key None: all
Lookup = Callable[[str, str, str | None], Any]


class ContainerError(Exception):
    """The kubelet's refusal to start a container: `reason` as it reports it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names replaced, `$$` escapes a `$`,
    an undefined reference left as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(one, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward API fieldRef, as the kubelet resolves it."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    found = _FIELD.match(path)
    if found:
        return str((meta.get(found.group(1)) or {}).get(found.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.podIP": status.get("podIP") or "127.0.0.1",
    }  # fmt: skip
    if path not in simple:
        raise ContainerError("CreateContainerConfigError", f"unsupported fieldRef {path}")
    return str(simple[path] or "")


_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12, "m": Decimal("0.001")}  # fmt: skip


def quantity(text: str) -> Decimal:
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    return Decimal(text)


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """A resourceFieldRef: limits.memory / requests.cpu ... in units of its divisor
    (rounded up, as the kubelet does)."""
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if value is None:
        raise ContainerError("CreateContainerConfigError", f"{ref['resource']} is not set")
    divisor = quantity(str(ref.get("divisor", "1")))
    return str(-(-quantity(str(value)) // divisor))


def environment(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup, api_port: int
) -> dict[str, str]:
    """The container's environment, in the kubelet's order: in-cluster variables, then
    envFrom sources, then env entries (later ones win; each may use the earlier)."""
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",  # the API server, reachable on loopback
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "HOSTNAME": pod["metadata"]["name"],
    }
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("secret", source["secretRef"]) if "secretRef" in source
            else ("configmap", source["configMapRef"])
        )  # fmt: skip
        values = lookup(kind, ref["name"], None)
        if values is None:
            if ref.get("optional"):
                continue
            raise ContainerError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
        for key, value in values.items():
            env[source.get("prefix", "") + key] = value
    for entry in container.get("env") or []:
        name, source = entry["name"], entry.get("valueFrom")
        if source is None:
            env[name] = expand(entry.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            kind, ref = (
                ("secret", source["secretKeyRef"]) if "secretKeyRef" in source
                else ("configmap", source["configMapKeyRef"])
            )  # fmt: skip
            value = lookup(kind, ref["name"], ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise ContainerError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in {kind} {ref['name']}",
                )
            env[name] = value
    return env


def _repository(image: str) -> str:
    """The last two parts of an image's repository: ghcr.io/a/b:1 -> a/b, busybox -> busybox."""
    repository = image.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:  # a tag (a ':' before the last '/' is a port)
        repository = repository.rsplit(":", 1)[0]
    return "/".join(repository.split("/")[-2:])


def entrypoint(image: str) -> list[str]:
    """The ENTRYPOINT of `image`, read from the Dockerfile that builds it. An image
    this project does not build fails as a kubelet fails an image it cannot pull."""
    suffix = _repository(image)
    if suffix in HOST_IMAGES:
        raise ContainerError("CreateContainerError", f"{image}: a container must name a command")
    dockerfile = IMAGES.get(suffix)
    if dockerfile is None:
        raise ContainerError("ErrImagePull", f'failed to pull image "{image}": not found')
    for line in reversed((ROOT / dockerfile).read_text().splitlines()):
        if line.startswith("ENTRYPOINT "):
            command = json.loads(line.removeprefix("ENTRYPOINT "))
            return [str(part) for part in command]
    raise ContainerError("CreateContainerError", f"{dockerfile} declares no ENTRYPOINT")


def command(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded; the image's ENTRYPOINT when no command."""
    image = container["image"]
    head = list(container.get("command") or []) or entrypoint(image)
    if _repository(image) not in HOST_IMAGES:
        entrypoint(image)  # an image nobody builds cannot start, whatever the command
    return [expand(part, env) for part in head + list(container.get("args") or [])]
