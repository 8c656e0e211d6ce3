"""Run a process that could delete files through a link to `/` with the file system
read-only but for one folder: a regression in the staging deletion then fails a test
instead of erasing the machine (it once did: an earlier build, run against the test of a
staging link to `/`, deleted every file under /etc before it was stopped).

A private mount namespace (`unshare`, util-linux): `/` and `/dev` are bind-mounted onto
themselves and remounted read-only, after the writable folder got its own bind mount.
As root that is a plain mount namespace; otherwise a user namespace maps the caller to
root inside it. Where neither is allowed, `confined` is None and such tests skip.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

_SCRIPT = (
    'set -e; mount --bind "$0" "$0"; mount --bind / /; mount -o remount,bind,ro /; '
    'mount --rbind /dev /dev; mount -o remount,bind,ro /dev; exec "$@"'
)


def _prefix(writable: Path) -> list[str]:
    import os

    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "sh", "-c", _SCRIPT,
            str(writable)]  # fmt: skip


@functools.cache
def available() -> bool:
    """Whether a confined process here really cannot write outside its folder."""
    if not shutil.which("unshare"):
        return False
    probe = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    outside = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    try:
        result = subprocess.run(
            [*_prefix(probe), "sh", "-c", f'touch "{probe}/in" && ! touch "{outside}/out"'],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0 and (probe / "in").exists() and not (outside / "out").exists()
    finally:
        shutil.rmtree(probe, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def confined(command: list[str], writable: Path) -> list[str] | None:
    """`command` confined to writing under `writable` (None: not possible here)."""
    return [*_prefix(writable), *command] if available() else None
