"""How many CPUs the merge sizes its scans for: affinity capped by a cgroup quota."""

import os

from stagingmerge_merger.delta import table as delta


def test_cgroup_v2_quota_in_whole_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert delta._cgroup_quota(tmp_path) == 2  # 1.5 CPUs: two threads may run
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert delta._cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert delta._cgroup_quota(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert delta._cgroup_quota(tmp_path) is None


def test_no_cgroup_files_mean_no_quota(tmp_path):
    assert delta._cgroup_quota(tmp_path) is None


def test_usable_cpus_never_exceed_the_affinity():
    assert 1 <= delta.usable_cpus() <= len(os.sched_getaffinity(0))
    partitions = int(delta.SCAN_CONFIG["datafusion.execution.target_partitions"])
    assert partitions == max(4, 2 * delta.usable_cpus())
