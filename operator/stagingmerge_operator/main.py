"""`stagingmerge-operator`: validate the configuration, then run kopf with the handlers."""

from __future__ import annotations

import sys

from .config import ConfigError, OperatorConfig, load


def main() -> None:
    try:
        config = load()
    except ConfigError as exc:
        sys.stderr.write(f"stagingmerge-operator: {exc}\n")
        raise SystemExit(2) from None

    try:
        import kopf

        from . import handlers  # noqa: F401 - registers the handlers
    except ImportError as exc:
        sys.stderr.write(
            f"stagingmerge-operator: {exc.name or exc} is not installed; the operator needs"
            " its extra: pip install 'stagingmerge[operator]'\n"
        )
        raise SystemExit(2) from None

    # kopf's logging first, for the leader's lines too: one handler, one line per record.
    kopf.configure(
        log_format={
            "json": kopf.LogFormat.JSON,
            "text": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
        }[config.log_format]
    )
    if config.leader_namespace:
        _lead(config)
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering objects
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz"
        if config.liveness_port
        else None,
    )


LEASE_NAME = "stagingmerge-operator"


def _lead(config: OperatorConfig) -> None:
    """Hold the leader's Lease before reconciling anything; leave when it is lost."""
    import os

    from .kube import Kube
    from .leader import Leadership
    from .standby import healthz_while_waiting

    leadership = Leadership(
        Kube(timeout_seconds=config.api_timeout_seconds),
        config.leader_namespace,
        LEASE_NAME,
        config.leader_lease_seconds,
    )
    with healthz_while_waiting(config.liveness_port):
        leadership.acquire()

    def lost() -> None:
        sys.stderr.write("stagingmerge-operator: lost the leader's lease; exiting\n")
        sys.stderr.flush()
        os._exit(1)  # kopf's handlers must stop now; the next instance takes over

    leadership.keep(lost)


if __name__ == "__main__":
    main()
