"""Which partitions `stagingmerge-cluster` rewrites (cluster.plan, cluster.recorded_files)."""

from __future__ import annotations

import json

from stagingmerge_merger.clustering import MARK, plan, recorded_files

BY = ("source_url", "cert_index")


def info(day: str, files: int, by=BY) -> dict:
    mark = json.dumps({"partition": {"seen_date": day}, "by": list(by)})
    return {MARK: mark, "operationMetrics": {"numFilesAdded": files}}


def test_the_newest_commit_of_a_partition_decides():
    infos = [info("d1", 2), {"operation": "WRITE"}, info("d1", 5), info("d2", 1, by=("x",))]
    assert recorded_files(infos, ["seen_date"], BY) == {("d1",): 2, ("d2",): -1}
    assert recorded_files([{MARK: "not json"}], ["seen_date"], BY) == {}


def test_oldest_first_newest_skipped_clustered_recognised():
    partitions = {("d3",): (4, 40), ("d1",): (1, 10), ("d2",): (3, 30), (None,): (1, 1)}
    decided = plan(partitions, {("d1",): 1, ("d2",): 2}, skip_newest=1, partitioned=True)
    # d1 still holds exactly the files its clustering added; d2 got an append since
    assert [p.values for p in decided.due] == [("d2",)]
    assert (decided.already, decided.newest_skipped, decided.null_skipped) == (1, 1, 1)


def test_an_unpartitioned_table_is_one_partition_never_skipped():
    decided = plan({(): (7, 70)}, {}, skip_newest=3, partitioned=False)
    assert [p.values for p in decided.due] == [()] and decided.newest_skipped == 0
    assert plan({(): (1, 70)}, {(): 1}, skip_newest=3, partitioned=False).due == []


def test_partition_values_are_spelled_as_delta_rs_filters_read_them():
    from datetime import date

    from stagingmerge_merger.clustering import value_text

    assert [value_text(v) for v in (True, False, 7, "a b", date(2026, 1, 2))] == [
        "true",
        "false",
        "7",
        "a b",
        "2026-01-02",
    ]
    # a boolean partition's mark matches its own files again on the next run
    decided = plan({(True,): (1, 5)}, {("true",): 1}, skip_newest=0, partitioned=True)
    assert decided.already == 1 and decided.due == []
