"""The Dockerfiles, checked as far as can be without a container engine."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
IMAGES = {
    "merger/Dockerfile": ("stagingmerge-merge", "merge"),
    "operator/Dockerfile": ("stagingmerge-operator", "operator"),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_entrypoint_is_the_console_script(dockerfile):
    script, extra = IMAGES[dockerfile]
    steps = final_stage(instructions(ROOT / dockerfile))
    entrypoint = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    assert entrypoint == [script] and script in SCRIPTS
    install = next(rest for word, rest in steps if word == "RUN" and "pip install" in rest)
    assert f"stagingmerge[{extra}]" in install and "--no-index" in install


def test_the_merge_image_ships_the_clustering_command():
    """The chart's CronJob runs `stagingmerge-cluster` in the merge image, which installs
    the merge package and so its console scripts."""
    assert SCRIPTS["stagingmerge-cluster"].startswith("stagingmerge_merger.")
    assert SCRIPTS["stagingmerge-merge"].startswith("stagingmerge_merger.")


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_runs_as_a_non_root_user(dockerfile):
    steps = final_stage(instructions(ROOT / dockerfile))
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric: runAsNonRoot can verify it


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_final_stage_has_no_build_tools(dockerfile):
    steps = final_stage(instructions(ROOT / dockerfile))
    assert steps[0][1].startswith("python:3.11-slim")
    for word, rest in steps:
        assert not (word == "RUN" and re.search(r"apt-get install|gcc|build-essential", rest))
        assert not (word == "COPY" and "--from" not in rest), "sources belong in the build stage"


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_copied_paths_exist(dockerfile):
    for word, rest in instructions(ROOT / dockerfile):
        if word == "COPY" and "--from" not in rest:
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_base_images_are_pinned_by_digest_and_shared():
    """A tag alone can change under a rebuilt image; every stage of both images names the
    same base by digest (Dependabot moves it, .github/dependabot.yml)."""
    bases = {
        rest.split()[0]
        for dockerfile in IMAGES
        for word, rest in instructions(ROOT / dockerfile)
        if word == "FROM" and not rest.startswith(("build", "$"))
    }
    assert len(bases) == 1, bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases.pop())
    dependabot = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    (docker,) = [u for u in dependabot["updates"] if u["package-ecosystem"] == "docker"]
    assert sorted(docker["directories"]) == sorted(f"/{Path(d).parent}" for d in IMAGES)
