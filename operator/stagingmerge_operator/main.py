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

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers

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
