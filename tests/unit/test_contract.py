"""The contract between the merge and the operator (stagingmerge_merger.contract) holds
together: every outcome has an exit code, the operator gives each the condition reason
the contract names, and a sharded merge combines every metrics field."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from stagingmerge_merger import contract
from stagingmerge_merger.contract import EXIT_CODE, REASON, MergeMetrics, Outcome
from stagingmerge_operator import conditions
from stagingmerge_operator.shardstatus import sum_metrics

MERGE_OUTCOMES = [o for o in Outcome if o not in contract.MAINTENANCE_OUTCOMES]


def job(succeeded: bool) -> conditions.JobState:
    return conditions.JobState(
        name="merge-1", finished=True, succeeded=succeeded, active=False, pods_running=False,
        suspended=False, attempts=1, failure_reason=None if succeeded else "BackoffLimitExceeded",
        failure_message=None, start_time=None, completion_time=None,
    )  # fmt: skip


def test_every_outcome_has_an_exit_code():
    assert set(EXIT_CODE) == set(Outcome)


@pytest.mark.parametrize("outcome", MERGE_OUTCOMES)
def test_the_operator_gives_each_outcome_the_contract_s_reason(outcome):
    """A run that exits 0 ends a succeeded Job, any other a failed one; the Succeeded
    condition's reason is then the contract's (MergeFailed when it names none)."""
    succeeded = EXIT_CODE[outcome] == contract.EXIT_OK
    verdict = conditions.outcome_of(job(succeeded), {"outcome": outcome, "error": "why"})
    assert verdict.reason == REASON.get(outcome, contract.Reason.MERGE_FAILED)
    assert verdict.phase == (conditions.SUCCEEDED if succeeded else conditions.FAILED)


def test_a_sharded_merge_s_worst_outcome_order_names_every_merge_outcome():
    assert sorted(contract.WORST_FIRST) == sorted(MERGE_OUTCOMES)


def test_every_metrics_field_says_how_shards_combine_it():
    kinds = {contract.SUM, contract.MIN, contract.MAX, contract.ANY, contract.FIRST,
             contract.WORST, contract.OWN}  # fmt: skip
    for f in dataclasses.fields(MergeMetrics):
        assert f.metadata.get("combine") in kinds, f.name
    total = sum_metrics([json.loads(MergeMetrics(inserted=2, shard="0/2").to_json())] * 2)
    assert total is not None
    own = set(contract.combined_fields(contract.OWN))
    assert set(total) == {f.name for f in dataclasses.fields(MergeMetrics)} - own | {
        "shards_reported"
    }
    assert total["inserted"] == 4


def test_a_report_of_another_version_still_reads():
    """Fields the operator does not know are ignored; fields the report lacks default."""
    m = MergeMetrics.from_report({"outcome": "merged", "inserted": 3, "from_the_future": 1})
    assert (m.outcome, m.inserted, m.batches) == (Outcome.MERGED, 3, 0)


def test_the_contract_needs_no_third_party_package():
    """The operator imports it; it must not pull pyarrow or deltalake in."""
    code = (
        "import sys; import stagingmerge_merger.contract;"
        " print(sorted(m for m in ('pyarrow', 'deltalake', 'numpy', 'structlog')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
