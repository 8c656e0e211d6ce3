"""GitOps health: Argo CD's Lua check run in a real Lua (lupa), Flux's CEL in a CEL interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from lupa import LuaRuntime

ROOT = Path(__file__).resolve().parents[2]
LUA = (ROOT / "gitops" / "argocd" / "health.lua").read_text()
ARGOCD_CM = yaml.safe_load((ROOT / "gitops" / "argocd" / "argocd-cm.yaml").read_text())
FLUX = yaml.safe_load((ROOT / "gitops" / "flux" / "kustomization.yaml").read_text())


def merge(generation: int = 1, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "stagingmerge.io/v1alpha1",
        "kind": "StagingMerge",
        "metadata": {"name": "m", "generation": generation},
    }
    if status:
        body["status"] = status
    return body


def succeeded(state: str, reason: str, generation: int = 1) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": reason, "message": "r"},
            {"type": "Succeeded", "status": state, "reason": reason, "message": "details"},
        ],
    }


CASES = [
    ("no status yet", merge(), "Progressing"),
    ("queued", merge(**succeeded("Unknown", "Queued")), "Progressing"),
    ("merging", merge(**succeeded("Unknown", "Merging")), "Progressing"),
    ("suspended", merge(**succeeded("Unknown", "Suspended")), "Suspended"),
    ("merged", merge(**succeeded("True", "Merged")), "Healthy"),
    ("failed", merge(**succeeded("False", "InvalidInput")), "Degraded"),
    ("new spec not observed", merge(generation=2, **succeeded("True", "Merged")), "Progressing"),
]


def run_lua(source: str, obj: dict[str, Any]) -> dict[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj) {source} end")
    result = check(_to_lua(lua, obj))
    return {"status": result["status"], "message": result["message"]}


def _to_lua(lua: LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


@pytest.mark.parametrize(("case", "obj", "expected"), CASES, ids=[c[0] for c in CASES])
def test_argocd_health(case, obj, expected):
    result = run_lua(LUA, obj)
    assert result["status"] == expected
    if expected in ("Healthy", "Degraded"):
        assert result["message"].endswith(": details")


def test_argocd_cm_carries_the_same_lua():
    embedded = ARGOCD_CM["data"]["resource.customizations.health.stagingmerge.io_StagingMerge"]
    lua_body = "\n".join(line for line in LUA.splitlines() if not line.startswith("--"))
    assert embedded.strip() == lua_body.strip()


def flux_state(obj: dict[str, Any]) -> str:
    exprs = FLUX["spec"]["healthCheckExprs"][0]
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    for state in ("inProgress", "failed", "current"):
        # no error may escape: Flux waits out its whole timeout on an expression that errs
        if env.program(env.compile(exprs[state])).evaluate(activation):
            return state
    return "unknown"


@pytest.mark.parametrize(
    ("case", "obj", "expected"),
    [
        ("merging", merge(**succeeded("Unknown", "Merging")), "inProgress"),
        ("merged", merge(**succeeded("True", "Merged")), "current"),
        ("failed", merge(**succeeded("False", "MergeFailed")), "failed"),
        ("new spec", merge(generation=3, **succeeded("True", "Merged")), "inProgress"),
        ("no status yet", {"metadata": {"generation": 1}, "status": {}}, "inProgress"),
        (
            "observed, no conditions yet",
            {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}},
            "inProgress",
        ),
    ],
)
def test_flux_health_check_exprs(case, obj, expected):
    assert flux_state(obj) == expected
