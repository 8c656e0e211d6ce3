"""`stagingmerge-operator`: validate the configuration, then run kopf with the handlers."""

from __future__ import annotations

import sys

from .config import ConfigError, load


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

    kopf.configure(
        log_format={
            "json": kopf.LogFormat.JSON,
            "text": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
        }[config.log_format]
    )
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering objects
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz"
        if config.liveness_port
        else None,
    )


if __name__ == "__main__":
    main()
