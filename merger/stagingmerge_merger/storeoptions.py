"""Storage options: deltalake's names split into obstore's arguments, and every value
checked before a run starts.

The same options serve delta-rs (reading and committing) and obstore (the staging
deletion, the log audit, markers). A value neither can use would otherwise fail late and
look like passing storage trouble (exit 1, retried for ever): `max_retries=abc`,
`connect_timeout=abc`, `allow_http=maybe`. `validate` refuses those (exit 2) before
anything is read, by the stores' own rules where they can be asked: each option is tried
on a throwaway obstore store of the kind its name belongs to (no request is made), and
object_store's own verdict — an unknown key, a value it fails to parse — is the answer.
An option no store knows and delta-rs does not name either is refused as unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .errors import InvalidInputError

# obstore's retry policy for the clean-up: a few attempts with backoff on 5xx/timeouts.
_RETRY: dict[str, Any] = {"max_retries": 5, "retry_timeout": timedelta(seconds=60)}

# Options delta-rs accepts that object_store calls "client options" in obstore.
_CLIENT_OPTION_NAMES = {
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "timeout",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "user_agent",
    "http1_only",
    "http2_only",
    "default_content_type",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_keep_alive_while_idle",
    "http2_max_frame_size",
    "randomize_addresses",
}
_CLIENT_PREFIXES = ("aws_", "azure_", "google_", "gcs_")

# Options only delta-rs understands (locking, credentials chains, its own retries); obstore
# would reject them. From delta-rs's crates/aws/src/constants.rs and its log store config.
_DELTA_ONLY_OPTIONS = {
    "aws_s3_locking_provider",
    "aws_s3_allow_unsafe_rename",
    "dynamo_lock_table_name",
    "delta_dynamo_table_name",
    "delta_dynamo_billing_mode",
    "delta_dynamo_max_elapsed_request_time",
    "aws_s3_pool_idle_timeout_seconds",
    "aws_sts_pool_idle_timeout_seconds",
    "aws_s3_get_internal_server_error_retries",
    "aws_endpoint_url_dynamodb",
    "aws_region_dynamodb",
    "aws_access_key_id_dynamodb",
    "aws_secret_access_key_dynamodb",
    "aws_session_token_dynamodb",
    "aws_profile",
    "aws_s3_addressing_style",
    "aws_iam_role_arn",
    "aws_s3_assume_role_arn",
    "aws_iam_role_session_name",
    "aws_s3_role_session_name",
    "aws_web_identity_token_file",
    "aws_role_arn",
    "aws_role_session_name",
    "aws_ec2_metadata_disabled",
    "aws_ec2_metadata_timeout",
    "aws_force_credential_load",
    "aws_config_file",
    "aws_shared_credentials_file",
    "conditional_put",
    "aws_conditional_put",
    "aws_copy_if_not_exists",
    "allow_unsafe_rename",
    "mount_allow_unsafe_rename",
}
_PROBES = {  # a throwaway store per kind, and what it needs to be built at all
    "s3": ("s3://stagingmerge-probe", {"aws_region": "us-east-1"}),
    "gs": ("gs://stagingmerge-probe", {}),
    "az": ("az://stagingmerge-probe", {"azure_storage_account_name": "probe"}),
}
_KIND_OF_PREFIX = {"aws_": "s3", "google_": "gs", "gcs_": "gs", "azure_": "az"}
MAX_RETRIES_LIMIT = 1000


def split_store_options(
    options: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """deltalake-style options into obstore's (store config, client options, retry config)."""
    config: dict[str, str] = {}
    client: dict[str, Any] = {}
    retry: dict[str, Any] = dict(_RETRY)
    for key, value in options.items():
        name = key.lower()
        bare = _bare(name)
        if name == "max_retries":
            retry["max_retries"] = parse_count(value, key)
        elif name == "retry_timeout":
            retry["retry_timeout"] = parse_duration(value, key)
        elif bare in _CLIENT_OPTION_NAMES:
            client[bare] = value
        elif name not in _DELTA_ONLY_OPTIONS:
            config[name] = value
    return config, client, retry


def _bare(name: str) -> str:
    return next((name[len(p) :] for p in _CLIENT_PREFIXES if name.startswith(p)), name)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """`500ms`, `3s`, `2m`, `1h` or bare seconds, as object_store's options take them."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInputError(
            f"storage option {option}: cannot read {_shown(text)} as a duration"
            " (use e.g. 500ms, 30s, 2m)"
        )
    value, unit = float(match.group(1)), match.group(2) or "s"
    seconds = value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if not math.isfinite(seconds) or seconds > timedelta.max.total_seconds() / 2:
        raise InvalidInputError(f"storage option {option}: {_shown(text)} is too long")
    return timedelta(seconds=seconds)


def parse_count(text: str, option: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"storage option {option}: {_shown(text)} is not a whole number"
        ) from None
    if not 0 <= value <= MAX_RETRIES_LIMIT:
        raise InvalidInputError(
            f"storage option {option}: {value} is out of range (0 to {MAX_RETRIES_LIMIT})"
        )
    return value


def _shown(value: str) -> str:
    """A value in a message: short and plain ones as they are, anything else masked."""
    return repr(value) if len(value) <= 24 and re.fullmatch(r"[\w .:-]*", value) else "***"


def validate(options: Mapping[str, str]) -> None:
    """Refuse (InvalidInputError, exit 2) any option no store and not delta-rs knows, and
    any value its store cannot parse. Secret values never appear in the message."""
    from .redact import is_secret_name

    for key, value in options.items():
        name = key.lower()
        if name == "max_retries":
            parse_count(value, key)
            continue
        if name == "retry_timeout":
            parse_duration(value, key)
            continue
        if name in _DELTA_ONLY_OPTIONS:
            continue
        verdicts = [_probe(kind, name, value) for kind in _kinds(name)]
        problems = [v for v in verdicts if v not in (None, "unknown")]
        if not problems and any(v is None for v in verdicts):
            continue  # a store takes it (and none that knows it refused the value)
        if problems:
            shown = "***" if is_secret_name(key) else _shown(value)
            raise InvalidInputError(
                f"storage option {key}: the store cannot use the value {shown} ({problems[0]})"
            )
        raise InvalidInputError(
            f"unknown storage option {key}: neither object_store nor delta-rs knows it"
            " (see the storage options of the deltalake documentation; names are"
            " case-insensitive)"
        )


def _kinds(name: str) -> list[str]:
    kind = next((k for p, k in _KIND_OF_PREFIX.items() if name.startswith(p)), None)
    return [kind] if kind else list(_PROBES)


def _probe(kind: str, name: str, value: str) -> str | None:
    """None when a throwaway `kind` store takes the option; "unknown" when it does not know
    it; otherwise what it said about the value."""
    from obstore.store import from_url as obstore_from_url

    from_url: Any = obstore_from_url  # typed per store kind in obstore
    url, base = _PROBES[kind]
    bare = _bare(name)
    try:
        if bare in _CLIENT_OPTION_NAMES:
            from_url(url, config=base or None, client_options={bare: value})
        else:
            from_url(url, config={**base, name: value})
    except BaseException as exc:  # noqa: BLE001 - pyo3 panics are BaseExceptions
        text = str(exc)
        if type(exc).__name__ == "UnknownConfigurationKeyError" or "Invalid key" in text:
            return "unknown"
        match = re.search(r'failed to parse "(.*?)" as (\w+)', text)
        if match and match.group(1) == value:  # not another setting's (the environment's)
            return f"not a {match.group(2).lower()}"
        if "Invalid Access Key" in text:
            return "not a base64 account key"
        if "RelativeUrlWithoutBase" in text or "invalid URL" in text.lower():
            return "not a URL"
        if isinstance(exc, Exception) and "builder error" in text:
            return None  # the client could not be built here for another reason (no CAs)
        return None if isinstance(exc, Exception) else "refused"
    return None
