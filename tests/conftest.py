"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    """Paths for main and staging under tmp_path (not created)."""
    return tmp_path / "main", tmp_path / "staging"
