"""A cluster-wide backfill: 50 StagingMerges for 5 main tables applied at once, with the
operator's per-main limit at 2 (the chart's operator.maxConcurrentPerMain). Stagings of one
main overlap, so merges running side by side insert the same keys concurrently and rely
on the merge's concurrent-writer guard. And finished objects collected by their TTL."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tests.e2e.harness import spec_for, wait_for
from tests.helpers import ct, key_list, rows, write

pytestmark = pytest.mark.e2e
MAINS, PER_MAIN, LIMIT = 5, 10, 2
SPAN, STEP = 30, 15  # staging j of a main holds positions [j*STEP, j*STEP + SPAN)
ALL = [(m, j) for m in range(MAINS) for j in range(PER_MAIN)]


def phase(kubectl, name: str) -> str | None:
    status = (kubectl.get(name) or {}).get("status") or {}
    return status.get("phase")


def peak_concurrency(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_fifty_merges_for_five_mains_end_exactly_and_respect_the_limit(
    install_operator, kubectl, runner, tmp_path
):
    universes, mains = [], []
    for m in range(MAINS):
        # every copy of a key, in whichever staging, is the same row: the expected main
        # does not depend on which merge inserted it first
        universe = ct([m % 3] * 200, range(200), seed=100 + m)
        main = tmp_path / f"main-{m}"
        write(main, universe.slice(0, 20))
        universes.append(universe)
        mains.append(main)
        for j in range(PER_MAIN):
            write(tmp_path / f"staging-{m}-{j}", universe.slice(j * STEP, SPAN))
    # every merge holds before its first commit until the test lets them go: the first
    # ones then have to be running side by side, whatever the machine's speed
    pause = tmp_path / "hold"
    hooks = kubectl.hooks(STAGINGMERGE_PAUSE=f"batch-start:{pause}")
    operator = install_operator("--set", f"operator.maxConcurrentPerMain={LIMIT}")
    for j in range(PER_MAIN):  # interleaved, as an automation would apply them
        for m in range(MAINS):
            staging = tmp_path / f"staging-{m}-{j}"
            kubectl.apply(f"fill-{m}-{j}", spec_for(mains[m], staging, batchRows=10, **hooks))
    held = wait_for(
        lambda: (
            alive
            if len(alive := runner.running()) == MAINS * LIMIT
            and sum(phase(kubectl, f"fill-{m}-{j}") == "Queued" for m, j in ALL)
            == len(ALL) - MAINS * LIMIT
            else None
        ),
        what=f"{LIMIT} merges running per main, the rest queued",
    )
    assert sorted({a.main for a in held}) == sorted({a.main for a in runner.attempts})
    queued = f'stagingmerge_merges_queued{{main="{mains[0]}"}} {PER_MAIN - LIMIT:.1f}'
    wait_for(lambda: queued in operator.scrape(), what=queued)
    Path(f"{pause}.go").touch()
    for m in range(MAINS):
        for j in range(PER_MAIN):
            assert kubectl.wait(f"fill-{m}-{j}", "True")["reason"] == "Merged"
    operator.scrape_until(
        'stagingmerge_merge_duration_seconds_count{outcome="succeeded"} 50.0',
        'stagingmerge_merge_rows_count{kind="inserted"} 50.0',
    )

    covered = (PER_MAIN - 1) * STEP + SPAN
    for m in range(MAINS):
        expected = universes[m].slice(0, covered)
        expected = expected.select(sorted(expected.column_names)).sort_by(
            [("source_url", "ascending"), ("cert_index", "ascending")]
        )
        assert rows(mains[m]).equals(expected), f"main-{m}"
        assert not (tmp_path / f"staging-{m}-0").exists()
    inserted = sum(
        kubectl.get(f"fill-{m}-{j}")["status"]["metrics"]["inserted"]
        for m in range(MAINS)
        for j in range(PER_MAIN)
    )
    assert inserted == MAINS * (covered - 20)
    by_main: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for attempt in runner.attempts:
        assert attempt.ended is not None
        by_main[attempt.main].append((attempt.started, attempt.ended))
    assert len(by_main) == MAINS and len(runner.attempts) == MAINS * PER_MAIN
    peaks = {main: peak_concurrency(spans) for main, spans in by_main.items()}
    assert max(peaks.values()) <= LIMIT, peaks
    assert LIMIT in peaks.values(), f"merges into one main never ran side by side: {peaks}"


def test_finished_merges_are_deleted_after_their_ttl_with_their_jobs(
    kubectl, operator, runner, tmp_path
):
    main = tmp_path / "main"
    write(main, ct([0] * 3, range(3), seed=1))
    for name in ("keep", "expire", "expire-bad"):
        write(tmp_path / name, ct([0] * 3, range(3, 6), seed=2))
    write(tmp_path / "bad", ct([0], [9]).drop_columns(["chain"]))
    kubectl.apply("keep", spec_for(main, tmp_path / "keep"))
    kubectl.apply("expire", spec_for(main, tmp_path / "expire", ttlSecondsAfterFinished=0))
    # a failed merge expires too
    kubectl.apply("expire-bad", spec_for(main, tmp_path / "bad", ttlSecondsAfterFinished=0))
    assert kubectl.wait("keep", "True")["reason"] == "Merged"
    wait_for(
        lambda: kubectl.get("expire") is None and kubectl.get("expire-bad") is None,
        what="both expired",
    )
    wait_for(
        lambda: [j["metadata"]["name"] for j in kubectl.jobs()] == ["keep-g1"],
        what="their Jobs collected with them",
    )
    assert [index for _, index in key_list(main)] == list(range(6))
    operator.scrape_until("stagingmerge_merges_expired_total 2.0")
    assert kubectl.get("keep") is not None
