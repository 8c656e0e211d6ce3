"""`pip install .` into a fresh virtualenv, as a user would: the plain install is a working
merge CLI; the operator without its extra says what to install in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stagingmerge_merger.contract import Outcome

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    result = subprocess.run(
        [str(folder / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_the_plain_install_merges(venv, tmp_path):
    merge = venv / "bin" / "stagingmerge-merge"
    help_text = subprocess.run([str(merge), "--help"], capture_output=True, text=True, check=True)
    assert "--staging" in help_text.stdout
    # the demo tables, written by the installed package itself
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "stagingmerge_merger.sample", "demo", str(tmp_path / "demo")],
        check=True,
        capture_output=True,
    )
    demo = tmp_path / "demo"
    result = subprocess.run(
        [str(merge), "--main", str(demo / "main"), "--staging", str(demo / "staging")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert (metrics["inserted"], metrics["skipped_existing"], metrics["skipped_duplicates"]) == (
        1500,
        1500,
        150,
    )
    clustered = subprocess.run(
        [str(venv / "bin" / "stagingmerge-cluster"), "--main", str(demo / "main")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert clustered.returncode == 0, clustered.stderr[-3000:]
    assert json.loads(clustered.stdout.strip().splitlines()[-1])["outcome"] in (
        Outcome.CLUSTERED,
        Outcome.NOTHING_TO_DO,
    )


def test_the_operator_without_its_extra_says_what_to_install(venv):
    result = subprocess.run(
        [str(venv / "bin" / "stagingmerge-operator")],
        capture_output=True,
        text=True,
        env={**os.environ, "STAGINGMERGE_DEFAULT_IMAGE": "example/merge:1"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stagingmerge-operator: kopf is not installed; the operator needs its extra:"
        " pip install 'stagingmerge[operator]'"
    ]
