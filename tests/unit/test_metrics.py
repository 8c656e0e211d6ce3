import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stagingmerge_merger import contract, reporting
from stagingmerge_merger.contract import MergeMetrics, Outcome


def test_json_has_the_documented_keys():
    data = json.loads(MergeMetrics(inserted=3).to_json())
    for key in (
        "staging_rows",
        "inserted",
        "skipped_existing",
        "skipped_duplicates",
        "batches",
        "main_version_before",
        "main_version_after",
        "staging_deleted",
        "duration_seconds",
        "outcome",
    ):
        assert key in data
    assert data["inserted"] == 3


def test_json_stays_under_the_termination_message_limit():
    text = MergeMetrics(error="x" * 10_000).to_json()
    assert len(text.encode()) <= contract.MAX_REPORT_BYTES
    assert json.loads(text)["error"].endswith(contract.CUT)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=6000))
def test_any_error_fits_and_keeps_its_start(error):
    """Escapes (quotes, control characters) and multi-byte characters (non-ASCII column
    names, emoji) all count: the encoded line is what the kubelet cuts."""
    text = MergeMetrics(outcome=Outcome.INVALID_INPUT, error=error).to_json()
    assert len(text.encode("utf-8")) + 1 <= 4096  # with its newline
    shown = json.loads(text)["error"]
    if shown == error:
        return
    assert shown.endswith(contract.CUT)
    kept = shown.removesuffix(contract.CUT)
    assert error.startswith(kept) and len(kept) > 0


def test_default_path_is_the_termination_log_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "TERMINATION_LOG", tmp_path / "termination-log")
    assert reporting.default_metrics_path() is None
    (tmp_path / "termination-log").touch()
    assert reporting.default_metrics_path() == tmp_path / "termination-log"
