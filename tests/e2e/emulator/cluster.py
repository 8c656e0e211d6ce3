"""A Kubernetes API on loopback for the end-to-end tests: kmock's emulator, completed.

kmock 0.8's KubernetesEmulator stores objects and serves list/watch/create/patch/
delete, but leaves out what an operator relies on. `ClusterEmulator` adds, and
tests (tests/e2e/test_cluster.py), exactly that:

- uid, resourceVersion (409 on a stale one), generation (bumped on spec changes),
  creationTimestamp, generateName, the namespace from the URL; 201 on create;
- the status subresource: PATCH .../status changes only status, a PATCH of the
  object leaves status alone;
- JSON Patch (RFC 6902) bodies, turned into the merge patch kmock applies;
- equality label and field selectors on list and watch; typed lists (`kind: ...List`);
- what kubectl needs: discovery with short names and categories (subresources as the API
  server lists them), server-side printing (Table, tests/e2e/emulator/printing.py), OpenAPI v3
  (tests/e2e/emulator/openapi.py) and field validation;
- custom objects pruned, validated and CEL-checked against their CRD on every write
  (tests/e2e/emulator/schema.py), 422 as the API server answers;
- garbage collection of dependents (ownerReferences) when their owner goes;
- injected faults (status codes or delays) for the reliability tests.

It runs in a thread with its own event loop, so tests stay synchronous and talk
to it over real HTTP with the official client, as kubectl would.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import enums, references, rendering
from kmock._internal.k8s import KubernetesError, KubernetesObjectNotFoundError

from tests.e2e.emulator import batch, openapi, printing
from tests.e2e.emulator.schema import CrdSchema, InvalidObjectError, UnknownFieldsError

re_openapi = re.compile(r"/openapi/v3/.+")
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}  # Go's strconv.ParseBool
ROOT = Path(__file__).resolve().parents[3]
OPERATOR_TOKEN = "operator-token"  # the operator's kubeconfig; RBAC applies to it


@dataclass
class Fault:
    """For `times` matching requests: wait `delay` seconds (a slow server: clients with a
    shorter timeout give up), then answer `status`, or serve normally when it is None."""

    matches: Callable[[rendering.Request], bool]
    times: int
    status: int | None = 500
    delay: float = 0.0


KEEP_REQUESTS = 64  # of kmock's own request log (the tests read `served` instead)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns `old` into `new` (None deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value)
    return patch


def matches_fields(obj: dict[str, Any], selector: str) -> bool:
    """Field selectors: `a.b=c`, `a.b==c`, `a.b!=c`, comma-separated (the API server supports
    a few paths per kind; any dotted path is accepted here)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        path, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        actual = printing.dig(obj, path.strip())
        if (str(actual) if actual is not None else "") == value.strip():
            if negate:
                return False
        elif not negate:
            return False
    return True


def matches_selector(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


_VERBS = {
    enums.action.LIST: "list",
    enums.action.WATCH: "watch",
    enums.action.FETCH: "get",
    enums.action.CREATE: "create",
    enums.action.DELETE: "delete",
}


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    authorizer: Any = None  # tests.e2e.emulator.rbac.Authorizer, when RBAC is enforced
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _schemas: dict[str, CrdSchema] = attrs.field(factory=dict, init=False)
    _columns: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _openapi: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # fields a real API server would silently drop from what the operator wrote
    pruned: list[str] = attrs.field(factory=list, init=False)
    # every request served, as handled (what the tests inspect)
    served: list[rendering.Request] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback["get /openapi/v3"] << (lambda _: openapi.index(self._openapi))
        self.fallback["get", re_openapi] << self._serve_openapi
        # kmock streams as application/octet-stream; client-go's watch decoder needs JSON
        (
            (self.fallback**1)[enums.action.WATCH]
            << kmock.headers({"Content-Type": "application/json"})
            << self._serve_watch
        )

    def _serve_openapi(self, request: rendering.Request) -> Any:
        path = str(request.url.path).removeprefix("/openapi/v3/")
        if path not in self._openapi:
            raise KubernetesError(status=404, reason="NotFound", message=f"no OpenAPI for {path}")
        return self._openapi[path]

    def register_crd(self, path: Path) -> None:
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(spec["names"].get("shortNames", [])),
                categories=set(spec["names"].get("categories", [])),
                subresources=set(version.get("subresources", {})),
            )
            self._schemas[key] = CrdSchema.from_crd(crd, version["name"])
            self._columns[key] = version.get("additionalPrinterColumns", [])
            self._openapi[f"apis/{spec['group']}/{version['name']}"] = openapi.document(
                crd, version["name"]
            )

    @staticmethod
    def _key(resource: references.resource) -> str:
        return f"{resource.group}/{resource.version}/{resource.plural}"

    def _admit(self, request: rendering.Request, obj: dict[str, Any]) -> dict[str, Any]:
        """A custom object as its CRD lets it be stored (422 otherwise)."""
        assert request.resource is not None
        schema = self._schemas.get(self._key(request.resource))
        if schema is None:
            return obj
        try:
            stored, dropped = schema.admit(
                obj, strict=request.params.get("fieldValidation") == "Strict"
            )
        except UnknownFieldsError as exc:
            raise KubernetesError(status=400, reason="BadRequest", message=str(exc)) from exc
        except InvalidObjectError as exc:
            raise KubernetesError(
                status=422, reason="Invalid", message=str(exc), details=exc.details()
            ) from exc
        if dropped and self._token(request) == OPERATOR_TOKEN:
            where = f"{request.method.name} {request.url.path}"
            self.pruned += [f"{where}: {field}" for field in dropped]
        return stored

    # --- the request path ----------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> Any:
        if len(self._requests) > KEEP_REQUESTS * 2:
            # kmock matches each request against its reactions by scanning every request it
            # kept: unbounded, a long test (a fleet of merges) slows down quadratically
            del self._requests[:-KEEP_REQUESTS]
        self.served.append(request)
        if request.action == enums.action.LIST and request.params.get("watch") in _TRUE:
            # the API server parses booleans as Go does; kmock knows only "true" (and the
            # official Python client sends "True")
            request = self._replace(request, request.data, action=enums.action.WATCH)
        for fault in self.faults:
            if fault.times > 0 and fault.matches(request):
                fault.times -= 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    raise KubernetesError(
                        status=fault.status,
                        reason="InjectedFault",
                        message=f"fault injected by the test ({fault.status})",
                    )
                break
        self._authorize(request)
        if request.resource is not None and request.action == enums.action.CREATE:
            request = self._prepare_create(request)
        elif (
            request.resource is not None
            and request.action == enums.action.UPDATE
            and request.name is not None
        ):
            request = self._prepare_update(request)
        if request.action == enums.action.DELETE:
            self._check_preconditions(request)
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        if request.action in (enums.action.DELETE, enums.action.UPDATE):
            await self._collect_garbage()  # a delete, or a patch that dropped the last finalizer
        return response

    def _authorize(self, request: rendering.Request) -> None:
        """RBAC (tests/e2e/emulator/rbac.py) for requests carrying a known token; 403 if refused."""
        if self.authorizer is None or request.resource is None or not request.resource.plural:
            return  # discovery (/api/v1, /apis/batch/v1): system:discovery allows it to all
        user = self.authorizer.tokens.get(self._token(request))
        if user is None:
            return  # the tests' own client: an administrator
        resource = request.resource.plural + (
            f"/{request.subresource}" if request.subresource else ""
        )
        verb = _VERBS.get(request.action) or ("patch" if request.method == "PATCH" else "update")
        checks = [((verb, request.resource.group, resource), request.namespace)]
        if request.action == enums.action.CREATE:
            # OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update on the
            # owner's finalizers subresource
            for ref in ((request.data or {}).get("metadata") or {}).get("ownerReferences") or []:
                if ref.get("blockOwnerDeletion"):
                    group = str(ref.get("apiVersion", "")).rpartition("/")[0]
                    plural = self._plural(group, ref.get("kind"))
                    checks.append((("update", group, f"{plural}/finalizers"), request.namespace))
        for grant, namespace in checks:
            refusal = self.authorizer.check(user, grant, namespace)
            if refusal is not None:
                raise KubernetesError(status=403, reason="Forbidden", message=refusal)

    @staticmethod
    def _token(request: rendering.Request) -> str:
        return (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()

    def _plural(self, group: str, kind: Any) -> str:
        for key, info in self.resources.items():
            if info.kind == kind and (key.group or "") == group:
                return str(key.plural)
        return f"{str(kind).lower()}s"

    def _prepare_create(self, request: rendering.Request) -> rendering.Request:
        data = copy.deepcopy(request.data or {})
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self._versions))
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        assert request.resource is not None
        if request.resource.group == "batch" and request.resource.plural == "jobs":
            refused = batch.refusal(data)
            if refused:
                raise KubernetesError(status=422, reason="Invalid", message=refused)
        return self._replace(request, self._admit(request, data))

    def _check_preconditions(self, request: rendering.Request) -> None:
        """DeleteOptions.preconditions: 409 when the object is not the one meant."""
        wanted = (
            ((request.data or {}).get("preconditions") or {})
            if isinstance(request.data, dict)
            else {}
        )
        if request.resource is None or request.name is None or not wanted:
            return
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # kmock answers 404
        found = self.objects[key]
        meta = found.raw.get("metadata") or {}
        for field in ("uid", "resourceVersion"):
            if wanted.get(field) is not None and wanted[field] != meta.get(field):
                raise KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"Precondition failed: {field} in precondition: {wanted[field]},"
                    f" {field} in object meta: {meta.get(field)}",
                )

    def _prepare_update(self, request: rendering.Request) -> rendering.Request:
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise KubernetesObjectNotFoundError()
        current = copy.deepcopy(self.objects[key].raw)
        data = request.data
        if isinstance(data, list):  # JSON Patch
            try:
                data = merge_diff(current, jsonpatch.apply_patch(current, data))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                # a failed "test" op (kopf tests resourceVersion) is 422, as the API server says
                raise KubernetesError(
                    status=422, reason="Invalid", message=str(exc), details=exc.details()
                ) from exc
        data = copy.deepcopy(data or {})
        meta = data.setdefault("metadata", {})
        expected = meta.pop("resourceVersion", None)
        if expected is not None and expected != current["metadata"].get("resourceVersion"):
            raise KubernetesError(
                status=409, reason="Conflict", message="the object has been modified; read it again"
            )
        info = self.resources.get(request.resource, None)
        if info is not None and "status" in info.subresources:
            if request.subresource == "status":
                data = {"metadata": meta, "status": data.get("status")}
            else:
                data.pop("status", None)
        data = merge_diff(current, self._admit(request, _merge(current, data)))
        meta = data.setdefault("metadata", {})
        if "spec" in data and request.subresource != "status":
            merged = _merge(current.get("spec"), data["spec"])
            if merged != current.get("spec"):
                meta["generation"] = int(current["metadata"].get("generation") or 1) + 1
        meta["resourceVersion"] = str(next(self._versions))
        return self._replace(request, data)

    def _replace(self, request: rendering.Request, data: Any, **other: Any) -> rendering.Request:
        """A copy of the (frozen) request with other data, standing in its place: kmock
        matches reactions by the identity of requests in its own list."""
        changed = attrs.evolve(request, data=data, **other)
        for log in (self._requests, self.served):
            for index in range(len(log) - 1, -1, -1):  # from the end: it is one of the latest
                if log[index] is request:
                    log[index] = changed
                    break
        return changed

    def _selected(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        labels, fields = request.params.get("labelSelector"), request.params.get("fieldSelector")
        return (not labels or matches_selector(_labels(obj), labels)) and (
            not fields or matches_fields(obj, fields)
        )

    def _printed(self, request: rendering.Request, objects: list[dict[str, Any]]) -> Any:
        """A Table when the client asks for one (kubectl get), else None."""
        if request.resource is None or not printing.wants_table(request.headers.get("Accept", "")):
            return None
        columns = self._columns.get(self._key(request.resource))
        return printing.table(objects, columns, str(next(self._versions)))

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = await super()._serve_list(request)
        result["items"] = [o for o in result["items"] if self._selected(request, o)]
        assert request.resource is not None
        info = self.resources.get(request.resource, None)
        group_version = "/".join(filter(None, [request.resource.group, request.resource.version]))
        printed = self._printed(request, result["items"])
        if printed is not None:
            return printed
        return {
            "kind": f"{info.kind}List" if info is not None and info.kind else "List",
            "apiVersion": group_version,
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": result["items"],
        }

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        result = await super()._serve_fetch(request)
        printed = self._printed(request, [result])
        return printed if printed is not None else result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """kmock's watch (the objects as ADDED, then every change), selected, and ended by
        the bookmark a streaming list (`sendInitialEvents=true`, kubectl's WatchList client)
        waits for after the initial events."""
        assert request.resource is not None
        yield b""  # the headers go out now, even if nothing happens
        async with self._lock:
            initial = [
                obj.raw
                for (resource, namespace, name), obj in self.objects.items()
                if resource == request.resource
                and not obj.deleted
                and request.namespace in (None, namespace)
                and request.name in (None, name)
            ]
        for raw in initial:
            if self._selected(request, raw):
                yield {"type": "ADDED", "object": raw}
        if request.params.get("sendInitialEvents") == "true":
            info = self.resources.get(request.resource, None)
            group_version = "/".join(
                filter(None, [request.resource.group, request.resource.version])
            )
            yield {
                "type": "BOOKMARK",
                "object": {
                    "kind": info.kind if info is not None else "",
                    "apiVersion": group_version,
                    "metadata": {
                        "resourceVersion": str(next(self._versions)),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
        async for event in self._buses[request.resource]:
            raw = event.get("object") or {}
            meta = raw.get("metadata") or {}
            if (
                request.namespace in (None, meta.get("namespace"))
                and request.name in (None, meta.get("name"))
                and self._selected(request, raw)
            ):
                yield event

    async def _serve_version(self, request: rendering.Request) -> Any:
        """Discovery as the API server answers it: subresources carry no short names or
        categories, and only the verbs they serve."""
        result = await super()._serve_version(request)
        for entry in result["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
            entry["verbs"] = sorted(entry["verbs"])
        return result

    async def _collect_garbage(self) -> None:
        """Delete every object whose owner is gone, until nothing changes."""
        while True:
            alive = {
                obj.raw["metadata"].get("uid") for _, obj in self.objects.items() if not obj.deleted
            }
            orphans = [
                (key, obj)
                for key, obj in self.objects.items()
                if not obj.deleted
                and any(
                    ref.get("uid") not in alive
                    for ref in obj.raw["metadata"].get("ownerReferences") or []
                )
            ]
            if not orphans:
                return
            for (resource, _ns, _name), obj in orphans:
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})


def _merge(old: Any, patch: Any) -> Any:
    if not isinstance(old, dict) or not isinstance(patch, dict):
        return patch
    result = dict(old)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(old.get(key), value)
    return result


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class RunningCluster:
    """The emulator served on 127.0.0.1 from a background thread."""

    def __init__(self, authorizer: Any = None) -> None:
        self.authorizer = authorizer
        self.emulator: ClusterEmulator | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)

    def start(self) -> RunningCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API emulator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with (
            ClusterEmulator(authorizer=self.authorizer) as emulator,
            kmock.Server(emulator) as server,
        ):
            emulator.resources.load_bundled()
            # not in kmock's bundle: the operator's leader election uses it
            emulator.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(
                kind="Lease",
                singular="lease",
                namespaced=True,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(),
                subresources=set(),
            )
            emulator.register_crd(ROOT / "crds" / "stagingmerge.io_stagingmerges.yaml")
            self.emulator = emulator
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, token: str = OPERATOR_TOKEN) -> Path:
        """A kubeconfig for this server; RBAC applies to the operator's token only."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "operator", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "emulator",
                            "context": {
                                "cluster": "emulator",
                                "user": "operator",
                                "namespace": "default",
                            },
                        }
                    ],
                    "current-context": "emulator",
                }
            )
        )
        return path

    def inject(self, fault: Fault) -> None:
        assert self.emulator is not None
        self._loop.call_soon_threadsafe(self.emulator.faults.append, fault)
