"""Which StagingMerge a Job event concerns (the watch itself runs in tests/e2e/test_faults.py)."""

from __future__ import annotations

from stagingmerge_operator.jobwatch import owner_of


def test_only_a_controlling_stagingmerge_owns_a_job():
    def job(*refs):
        return {"metadata": {"ownerReferences": list(refs)}}

    mine = {"apiVersion": "stagingmerge.io/v1alpha1", "name": "m", "controller": True}
    assert owner_of(job(mine)) == "m"
    assert owner_of(job({**mine, "controller": False})) is None
    assert owner_of(job({**mine, "apiVersion": "batch/v1", "name": "cron"})) is None
    assert owner_of({"metadata": {}}) is None
