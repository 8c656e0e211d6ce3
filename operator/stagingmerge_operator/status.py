"""Writing a StagingMerge's status: the one place that patches it.

`StatusWriter.write` turns an outcome into the status (phase, conditions, progress, the
run's fields), patches it only when something changed (with the resourceVersion as a
precondition: a 409 means another writer moved it, and the reconciler reads again), and
on a phase change records the Event and, for a run that ended, the operator's metrics.
It never reconciles anything: it reports whether the merge just ended, and the caller
decides what that frees (reconcile.py starts the merges queued on that main).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import conditions as c
from . import metrics
from .kube import Kube

log = logging.getLogger("stagingmerge.operator")


@dataclass
class StatusWriter:
    kube: Kube
    clock: Callable[[], str]

    def write(
        self,
        merge: dict[str, Any],
        outcome: c.Outcome,
        *,
        generation: int,
        extra: Mapping[str, Any] | None = None,
        job: c.JobState | None = None,
        metrics_: Mapping[str, Any] | None = None,
        event: tuple[str, str] | None = None,
        event_message: str | None = None,
    ) -> bool:
        """Write the status; True when this write ended the merge's run (its phase turned
        terminal), which frees its main table's slot."""
        status = merge.get("status") or {}
        stamp = self.clock()
        new: dict[str, Any] = {
            "observedGeneration": generation,
            "phase": outcome.phase,
            "terminalState": outcome.phase if outcome.phase in c.TERMINAL_PHASES else None,
            "progress": c.progress(outcome, job, metrics_),
            "conditions": c.conditions_for(
                status.get("conditions") or [], outcome, generation, stamp
            ),
        }
        if job is not None:
            new["attempts"] = job.attempts
        new.update(extra or {})
        changed_phase = status.get("phase") != outcome.phase
        if all(status.get(k) == v for k, v in new.items() if k != "conditions") and same_conditions(
            status.get("conditions") or [], new["conditions"]
        ):
            return False
        self.kube.patch_merge_status(merge, new)
        meta = merge["metadata"]
        log.info(
            "%s/%s: %s (%s) %s",
            meta["namespace"],
            meta["name"],
            outcome.phase,
            outcome.reason,
            outcome.message,
        )
        if changed_phase and event is not None:
            self.kube.event(merge, event[0], event[1], event_message or outcome.message)
        ended = changed_phase and outcome.phase in c.TERMINAL_PHASES
        if ended and outcome.reason != c.R_INVALID_SPEC:
            metrics.record_terminal(
                outcome.phase == c.SUCCEEDED, outcome.reason, dict(metrics_) if metrics_ else None
            )
        return ended

    def acknowledge(self, merge: dict[str, Any], generation: int) -> None:
        """Record that `generation` was seen, changing nothing else."""
        status = merge.get("status") or {}
        if status.get("observedGeneration") == generation:
            return
        conditions = [
            dict(cond, observedGeneration=generation) for cond in status.get("conditions") or []
        ]
        self.kube.patch_merge_status(
            merge, {"observedGeneration": generation, "conditions": conditions}
        )


def same_conditions(old: list[Mapping[str, Any]], new: list[Mapping[str, Any]]) -> bool:
    """Equal but for their lastTransitionTime."""

    def strip(conds: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in x.items() if k != "lastTransitionTime"} for x in conds),
            key=lambda x: str(x.get("type")),
        )

    return strip(old) == strip(new)
