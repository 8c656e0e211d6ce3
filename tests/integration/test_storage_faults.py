"""The merge through a fault proxy in front of each object store (tests/faults/): the
faults real stores have that an outage test does not show. Each run is the real CLI,
judged against the same merge into a twin main that saw no fault, over every column.

Two proxies: Toxiproxy (the real one, built from its Go module) for what happens to
bytes (a throttled link, answers sliced into pieces), and one of our own
(tests/faults/http_proxy.py) for what happens to one request ("the answer of the first
commit PUT, after the store applied it"), which a TCP proxy cannot pick out."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagingmerge_merger.contract import Outcome
from tests.faults.http_proxy import FaultProxy, Rule
from tests.faults.toxiproxy import Toxiproxy
from tests.helpers import CLUSTER_CLI, CliResult, ct, run_cli, run_cli_after_first_batch

COMMIT = r"/_delta_log/\d{20}\.json"  # a commit file, as PUT (S3, Azure) or named in GCS's query
STORES = pytest.mark.parametrize(
    "store",
    [
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("azure", marks=pytest.mark.azure),
        pytest.param("gcs", marks=pytest.mark.gcs),
    ],
    indirect=True,
)


def upstream(store) -> str:
    """The store's server, http://host:port."""
    return str(store.server.endpoint if store.kind == "s3" else store.server.url)


def through(store, endpoint: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment for the store reached at `endpoint` (a proxy in front of it)."""
    if store.kind == "s3":
        return {**store.env, "AWS_ENDPOINT_URL": endpoint}
    if store.kind == "azure":
        return {**store.env, "AZURITE_BLOB_STORAGE_URL": endpoint}
    account = json.loads(Path(store.env["GOOGLE_SERVICE_ACCOUNT"]).read_text())
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({**account, "gcs_base_url": endpoint}))
    return {**store.env, "GOOGLE_SERVICE_ACCOUNT": str(path)}


@pytest.fixture
def proxy(store, tmp_path) -> Iterator[tuple[FaultProxy, dict[str, str]]]:
    """A fault proxy in front of the store's server, and the CLI's environment through it."""
    faults = FaultProxy(upstream(store)).start()
    yield faults, through(store, faults.endpoint, tmp_path)
    faults.stop()


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    if Toxiproxy.binary() is None:
        pytest.skip("Toxiproxy is not built (make test builds it: tools/build_toxiproxy.py)")
    server = Toxiproxy().start()
    yield server
    server.stop()


@pytest.fixture
def toxic(store, toxiproxy, tmp_path, request) -> Iterator[tuple[str, dict[str, str]]]:
    """A Toxiproxy proxy in front of the store's server: its name (for toxics) and the
    CLI's environment through it."""
    name = f"p{abs(hash(request.node.nodeid)) % 10**8}"
    # fake-gcs-server routes by the Host header, which a TCP proxy passes on as its own
    # address: for GCS, our request proxy (no rules) behind Toxiproxy puts the store's back
    hosts = FaultProxy(upstream(store)).start() if store.kind == "gcs" else None
    target = hosts.endpoint if hosts is not None else upstream(store)
    endpoint = toxiproxy.proxy(name, target.removeprefix("http://"))
    yield name, through(store, endpoint, tmp_path)
    toxiproxy.remove(name)
    if hosts is not None:
        hosts.stop()


def tables(store, keys: int = 20) -> None:
    """main and its twin: logs 0-1, indexes [0, keys); staging: [keys / 2, 3 keys / 2),
    half new; each written once for main and once for the twin."""
    for name in ("main", "twin"):
        store.write(name, ct([0, 1] * keys, [i // 2 for i in range(2 * keys)], seed=1))
    later = [keys // 2 + i // 2 for i in range(2 * keys)]
    for name in ("staging", "staging-twin"):
        store.write(name, ct([0, 1] * keys, later, seed=2))


RETRIES = ("--storage-option", "max_retries=2", "--storage-option", "retry_timeout=5s")


def merge(store, env: dict[str, str], *args: str, main: str = "main") -> CliResult:
    """The CLI, with object_store's retries short (2, within 5 s): a fault the retries
    do not absorb fails the run in seconds."""
    staging = "staging" if main == "main" else "staging-twin"
    return run_cli(
        "--main", store.uri(main), "--staging", store.uri(staging), *RETRIES, *args, env=env
    )  # fmt: skip


def fired(rule: Rule, faults: FaultProxy, run: CliResult | None = None) -> None:
    seen = [(r.method, r.path[:120], r.status) for r in faults.requests][-40:]
    said = run.error_lines if run is not None else []
    assert rule.fired == rule.times, f"the fault never happened: {rule}; {seen}; {said}"


@STORES
def test_a_commit_the_store_applied_whose_answer_was_lost(store, proxy):
    """The first commit PUT reaches the store, and its answer never reaches the merge:
    object_store retries, the conditional write answers that the file exists, and
    delta-rs commits the same files at the next version. No row twice, and the metrics
    say what happened: one lost answer, no other writer, nothing repaired."""
    faults, env = proxy
    tables(store)
    lost = faults.add(Rule("PUT|POST", f"/main{COMMIT}", "lose-answer"))
    got, want = merge(store, env), merge(store, store.env, main="twin")
    fired(lost, faults)
    assert got.code == want.code == 0, got.stderr
    assert store.rows("main").equals(store.rows("twin"))
    assert got.metrics["inserted"] == want.metrics["inserted"] == 20
    assert got.metrics["commit_answers_lost"] == 1
    assert got.metrics["concurrent_commits"] == 0
    assert got.metrics["duplicates_repaired"] == 0
    assert got.metrics["staging_deleted"] is True and not store.exists("staging")


@STORES
def test_a_staging_delete_the_store_applied_whose_answer_was_lost(store, proxy):
    """Deleting staging: one DELETE applied, its answer lost; the retry finds nothing
    there, which is what was wanted. Staging is gone, main exact, exit 0."""
    faults, env = proxy
    tables(store)
    # S3 deletes many objects in one POST ?delete, Azure in one blob batch, GCS one each
    batches = {
        "s3": Rule("POST", r"[?&]delete", "lose-answer"),
        "azure": Rule("POST", r"comp=batch", "lose-answer"),
    }
    lost = faults.add(batches.get(store.kind) or Rule("DELETE", r"/staging/", "lose-answer"))
    got, want = merge(store, env), merge(store, store.env, main="twin")
    fired(lost, faults)
    assert got.code == want.code == 0, got.stderr
    assert store.rows("main").equals(store.rows("twin"))
    assert got.metrics["staging_deleted"] is True and not store.exists("staging")


@STORES
def test_a_throttling_storm_while_main_s_keys_are_read(store, proxy):
    """429 Too Many Requests, then 503 SlowDown, on main's data files: within the retries
    the merge rides it out and is exact; past them it fails (exit 1, not exit 2: a storm
    passes) with staging and main as they were, and the rerun finishes exactly."""
    faults, env = proxy
    tables(store)
    short = faults.add(Rule("GET", r"/main/.*\.parquet", "status", times=2, status=429))
    got = merge(store, env, "--keep-staging")
    fired(short, faults)
    assert got.code == 0, got.stderr
    long = faults.add(Rule("GET", r"/twin/.*\.parquet", "status", times=1000, status=503))
    before = store.rows("twin")
    failed = merge(store, env, main="twin")
    assert long.fired > 0
    assert failed.code == 1, failed.stderr
    assert failed.metrics["outcome"] == Outcome.FAILED
    assert store.rows("twin").equals(before) and store.exists("staging-twin")
    faults.clear()
    rerun = merge(store, env, main="twin")
    assert rerun.code == 0, rerun.stderr
    assert store.rows("main").equals(store.rows("twin"))


@STORES
def test_a_data_file_upload_reset_midway(store, proxy):
    """The connection drops after 1 KB of the batch's data file has been sent (the store
    keeps nothing): object_store sends it again; one commit, main exact."""
    faults, env = proxy
    tables(store)
    reset = faults.add(Rule("PUT|POST", r"/main/[^_].*\.parquet", "cut", cut_after=1024))
    got, want = merge(store, env), merge(store, store.env, main="twin")
    fired(reset, faults)
    assert got.code == want.code == 0, got.stderr
    assert store.rows("main").equals(store.rows("twin"))
    assert got.metrics["concurrent_commits"] == got.metrics["commit_answers_lost"] == 0


@STORES
def test_a_commit_that_times_out(store, proxy):
    """The commit PUT is held past the client's timeout (2 s) and reaches the store
    later. object_store does not send a PUT again after a timeout, so the merge cannot
    know whether its commit landed: it fails (exit 1) with staging intact, the held commit
    lands, and the rerun inserts nothing twice and finishes. (Or, should the client
    retry, the run ends exact with exit 0.)"""
    faults, env = proxy
    tables(store)
    held = faults.add(Rule("PUT|POST", f"/main{COMMIT}", "delay", seconds=6))
    got = merge(store, env, "--storage-option", "timeout=2s")
    want = merge(store, store.env, main="twin")
    fired(held, faults, got)
    while held.done < 1:  # the held commit reaches the store: progress, not a guess
        time.sleep(0.05)
    assert got.code in (0, 1) and want.code == 0, got.stderr
    if got.code == 1:
        assert got.metrics["outcome"] == Outcome.FAILED and store.exists("staging")
        rerun = merge(store, env)
        assert rerun.code == 0, rerun.stderr
        assert rerun.metrics["inserted"] == 0  # the held commit had them in
    assert store.rows("main").equals(store.rows("twin"))
    assert not store.exists("staging")


@STORES
def test_every_request_answered_late(store, proxy):
    """200-500 ms on every request, as a store far away or busy answers: slower, exact."""
    faults, env = proxy
    tables(store)
    slow = faults.add(Rule(".*", ".*", "delay", times=10**6, seconds=0.2, jitter=0.3))
    got, want = merge(store, env), merge(store, store.env, main="twin")
    assert slow.fired > 10
    assert got.code == want.code == 0, got.stderr
    assert store.rows("main").equals(store.rows("twin"))


@STORES
def test_a_clustering_commit_whose_answer_was_lost(store, proxy):
    """stagingmerge-cluster's rewrite commit is applied and its answer lost: the
    partition's rows are neither doubled nor lost, whatever the run's exit; a rerun ends
    with every partition clustered and the same rows."""
    faults, env = proxy
    for part in range(3):  # one day, three files of a live writer
        rows = ct([i % 4 for i in range(200)], [part * 100 + i // 4 for i in range(200)], seed=part)
        store.write("main", rows, partition_by=["seen_date"])
    before = store.rows("main")
    lost = faults.add(Rule("PUT|POST", f"/main{COMMIT}", "lose-answer"))
    first = cluster(store, env)
    fired(lost, faults)
    assert first.code in (0, 1), first.stderr
    assert store.rows("main").equals(before)
    again = cluster(store, env)
    assert again.code == 0, again.stderr
    assert store.rows("main").equals(before)
    assert again.metrics["outcome"] in (Outcome.NOTHING_TO_DO, Outcome.CLUSTERED), again.metrics


def cluster(store, env: dict[str, str]) -> CliResult:
    return run_cli(
        "--main", store.uri("main"), "--skip-newest", "0", *RETRIES, env=env, command=CLUSTER_CLI
    )  # fmt: skip


@STORES
def test_throttled_to_1_mb_per_second_and_stopped_mid_run(store, toxic, toxiproxy):
    """Every byte to the store at 1 MB/s (Toxiproxy's bandwidth toxic), and SIGTERM once
    the first batch committed: the run stops at a batch boundary (exit 1, interrupted),
    staging kept, main holding whole batches only; the rerun finishes exactly."""
    name, env = toxic
    tables(store, keys=1_000)  # files under the 5 MB of a multipart upload (fake-gcs has none)
    toxiproxy.toxic(name, "bandwidth", "upstream", rate=1024)  # KB/s
    stopped = run_cli_after_first_batch(
        "--main", store.uri("main"), "--staging", store.uri("staging"), *RETRIES,
        "--batch-rows", "200",
        then=lambda proc: proc.send_signal(signal.SIGTERM), env=env, timeout=300,
    )  # fmt: skip
    assert stopped.code == 1, stopped.stderr
    assert stopped.metrics["outcome"] == Outcome.INTERRUPTED
    assert 1 <= stopped.metrics["batches"] < 10 and store.exists("staging")
    keys = store.keys("main")
    assert len(keys) == len(set(keys)) == 2_000 + stopped.metrics["inserted"]
    rerun, want = merge(store, env), merge(store, store.env, main="twin")
    assert rerun.code == want.code == 0, rerun.stderr
    assert store.rows("main").equals(store.rows("twin"))
    assert stopped.metrics["inserted"] + rerun.metrics["inserted"] == want.metrics["inserted"]


@STORES
def test_answers_sliced_into_small_late_pieces(store, toxic, toxiproxy):
    """Every answer in pieces of about 64 bytes, each a little late (Toxiproxy's
    slicer): reads of the log, statistics and data files reassemble them; exact."""
    name, env = toxic
    tables(store)
    toxiproxy.toxic(name, "slicer", "downstream", average_size=64, size_variation=32, delay=50)
    got, want = merge(store, env), merge(store, store.env, main="twin")
    assert got.code == want.code == 0, got.stderr
    assert store.rows("main").equals(store.rows("twin"))
