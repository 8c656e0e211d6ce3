"""No run of the CLI prints a credential (issue 29): every error path, each store, with a
secret planted where a user could put one, and the secret searched for in stdout, stderr
and the metrics file — as written, percent-encoded and percent-decoded."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import CliResult, ct, run_cli, write

# Each case: (store needed or None, function(secret, tmp_path, store) -> (argv, env))
Case = Callable[[str, Path, object], tuple[list[str], dict[str, str]]]


def local_pair(tmp: Path) -> list[str]:
    main, staging = tmp / "main", tmp / "staging"
    if not main.exists():
        write(main, ct([0] * 2, range(2), seed=1))
        write(staging, ct([0] * 2, range(1, 3), seed=2))
    return ["--main", str(main), "--staging", str(staging)]


def mistyped_flag(secret, tmp, _store):
    return [*local_pair(tmp), "--storage-options", f"aws_secret_access_key={secret}"], {}


def mistyped_flag_with_equals(secret, tmp, _store):
    return [*local_pair(tmp), f"--storage-optoin=AZURE_STORAGE_ACCOUNT_KEY={secret}"], {}


def ambiguous_abbreviation(secret, tmp, _store):
    return [*local_pair(tmp), f"--st={secret}"], {}


def stray_value(secret, tmp, _store):
    return [*local_pair(tmp), secret], {}


def unknown_option(secret, tmp, _store):
    return [*local_pair(tmp), "--storage-option", f"aws_secret_acces_key={secret}"], {}


def bad_value_of_a_secret_option(secret, tmp, _store):
    # known to the Azure store, whose value it cannot use (not base64)
    return [*local_pair(tmp), "--storage-option", f"azure_storage_account_key={secret}!"], {}


def password_in_an_azure_uri(secret, tmp, _store):
    staging = f"abfss://data:{secret}@acct.dfs.core.windows.net/staging"
    return ["--main", str(tmp / "main"), "--staging", staging], {}


def user_info_in_an_s3_uri(secret, tmp, _store):
    return ["--main", f"s3://AKIAEXAMPLE:{secret}@lake/main", "--staging", "s3://lake/s"], {}


def password_in_a_file_uri(secret, tmp, _store):
    return ["--main", f"file://user:{secret}@host/tmp/main", "--staging", str(tmp / "s")], {}


def query_string_credentials(secret, tmp, _store):
    return ["--main", f"s3://lake/main?X-Amz-Signature={secret}", "--staging", "s3://l/s"], {}


def proxy_password_on_a_merge(secret, tmp, store):
    """A successful run: the "merge starting" line lists the options."""
    main = store.write("main", ct([0] * 2, range(2), seed=1))
    staging = store.write("staging", ct([0] * 2, range(1, 3), seed=2))
    # a proxy on loopback that is never used for loopback endpoints: no_proxy-free, the
    # client would use it; so name one that answers nothing and exclude the store's host
    options = [f"proxy_url=http://user:{secret}@127.0.0.1:9", "proxy_excludes=127.0.0.1"]
    extra = [a for o in options for a in ("--storage-option", o)]
    return ["--main", main, "--staging", staging, *extra], store.env


def unreachable_store_with_a_secret_key(secret, tmp, store):
    options = {
        "s3": ["AWS_ENDPOINT_URL=http://127.0.0.1:9", f"AWS_SECRET_ACCESS_KEY={secret}",
               "AWS_ACCESS_KEY_ID=AKIAEXAMPLE", "AWS_ALLOW_HTTP=true", "AWS_REGION=us-east-1"],
        "azure": ["AZURE_STORAGE_USE_EMULATOR=true", "azure_storage_account_name=devstoreaccount1",
                  f"azure_storage_sas_token=sv=2024&sig={secret}"],
        "gcs": [f"google_service_account_key={{\"private_key\": \"{secret}\"}}"],
    }[store.kind]  # fmt: skip
    env = {} if store.kind == "s3" else store.env
    if store.kind == "azure":
        env = {k: v for k, v in env.items() if "KEY" not in k}  # the SAS token is the secret
    extra = [
        a for o in [*options, "max_retries=0", "retry_timeout=1s"] for a in ("--storage-option", o)
    ]
    main, staging = store.uri("main"), store.uri("staging")
    return ["--main", main, "--staging", staging, *extra], env


def secret_in_the_environment(secret, tmp, store):
    env = {**store.env, "AWS_SECRET_ACCESS_KEY": secret, "AZURE_STORAGE_ACCOUNT_KEY": secret}
    return ["--main", store.uri("main"), "--staging", store.uri("nothing%41")], env


LOCAL: dict[str, Case] = {
    "a mistyped flag with its value": mistyped_flag,
    "a mistyped flag=value": mistyped_flag_with_equals,
    "an ambiguous abbreviation=value": ambiguous_abbreviation,
    "a stray value": stray_value,
    "an unknown option's value": unknown_option,
    "a secret option's value the store cannot use": bad_value_of_a_secret_option,
    "a password in an abfss URI": password_in_an_azure_uri,
    "user-info in an s3 URI": user_info_in_an_s3_uri,
    "a password in a file URI": password_in_a_file_uri,
    "credentials in a query string": query_string_credentials,
}
STORES: dict[str, Case] = {
    "a proxy password on a merge that succeeds": proxy_password_on_a_merge,
    "an unreachable store and a secret key": unreachable_store_with_a_secret_key,
    "a secret in the environment": secret_in_the_environment,
}


def planted() -> str:
    # letters and digits only: nothing an encoder would change, so any copy is this one
    return "Pl4nted" + uuid.uuid4().hex


def assert_never_printed(result: CliResult, metrics_file: Path, secret: str) -> None:
    written = metrics_file.read_text() if metrics_file.exists() else ""
    everything = result.stdout + result.stderr + written
    assert result.stdout.strip(), "the run printed no metrics"
    for form in {secret, quote(secret, safe=""), secret[7:]}:
        assert form not in everything, f"{form!r} printed:\n{everything[-3000:]}"


@pytest.mark.parametrize("case", list(LOCAL))
def test_no_error_path_prints_a_planted_secret(tmp_path, case):
    secret = planted()
    argv, env = LOCAL[case](secret, tmp_path, None)
    metrics_file = tmp_path / "metrics.json"

    result = run_cli(*argv, "--metrics-file", str(metrics_file), env=env)

    assert result.code == 2, result.stderr
    assert_never_printed(result, metrics_file, secret)


@pytest.mark.parametrize("case", list(STORES))
def test_no_store_path_prints_a_planted_secret(tmp_path, case, store):
    if store.kind == "local":
        pytest.skip("these paths are an object store's")
    secret = planted()
    argv, env = STORES[case](secret, tmp_path, store)
    metrics_file = tmp_path / "metrics.json"

    result = run_cli(*argv, "--metrics-file", str(metrics_file), env=env, timeout=300)

    assert result.metrics.get("outcome"), result.stderr
    assert_never_printed(result, metrics_file, secret)
