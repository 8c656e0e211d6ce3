from datetime import timedelta
from pathlib import Path

import pytest

from stagingmerge_merger import contract, storage
from stagingmerge_merger.errors import InvalidInputError
from stagingmerge_merger.storage import parse_location as loc


class TestParse:
    def test_local_paths_become_absolute(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert loc("a/b").path == str(tmp_path / "a" / "b")
        assert loc(f"file://{tmp_path}/x").path == str(tmp_path / "x")
        assert loc("a/../b").path == str(tmp_path / "b")
        assert loc("a").is_local

    @pytest.mark.parametrize(
        ("uri", "kind", "container", "path"),
        [
            ("s3://bucket/a/b/", "s3", "bucket", "a/b"),
            ("s3a://bucket//a/./b", "s3", "bucket", "a/b"),
            ("gs://bkt/t", "gs", "bkt", "t"),
            ("az://cont/t", "az", "cont", "t"),
            ("abfss://cont@acct.dfs.core.windows.net/t/x", "az", "acct/cont", "t/x"),
            ("s3://bucket", "s3", "bucket", ""),
        ],
    )
    def test_object_store_uris(self, uri, kind, container, path):
        parsed = loc(uri)
        assert (parsed.kind, parsed.container, parsed.path) == (kind, container, path)

    @pytest.mark.parametrize(
        ("uri", "message"),
        [
            ("ftp://host/x", "unsupported URI scheme 'ftp'"),
            ("s3:///x", "names no bucket"),
            ("s3://b/x?sig=secret", "query strings are not allowed"),
            ("s3://key:secret@b/x", "credentials in URIs"),
            ("s3://b/../x", "'..' is not allowed"),
            ("file://host/x", "must not name a host"),
            ("", "empty"),
        ],
    )
    def test_bad_uris(self, uri, message):
        with pytest.raises(InvalidInputError, match=message) as info:
            loc(uri)
        assert "secret" not in str(info.value)


class TestNesting:
    def test_prefix_boundaries_are_path_segments(self):
        assert loc("s3://b/run-a").contains(loc("s3://b/run-a/x"))
        assert not loc("s3://b/run-a").contains(loc("s3://b/run-a-sibling"))
        assert loc("s3://b").contains(loc("s3://b/anything"))
        assert not loc("s3://b/x").contains(loc("s3://c/x"))
        assert not loc("s3://b/x").contains(loc("gs://b/x"))

    def test_local(self, tmp_path):
        assert loc(str(tmp_path)).contains(loc(str(tmp_path / "t")))
        assert not loc(str(tmp_path / "t")).contains(loc(str(tmp_path / "t2")))
        assert loc(str(tmp_path / "t")).overlaps(loc(str(tmp_path)))

    def test_azure_account_is_compared_when_both_name_it(self):
        assert loc("az://cont/t").contains(loc("abfss://cont@acct.dfs.core.windows.net/t/x"))
        assert not loc("abfss://cont@a1.dfs.core.windows.net/t").contains(
            loc("abfss://cont@a2.dfs.core.windows.net/t")
        )


class TestOptions:
    def test_key_value_pairs(self):
        assert storage.parse_storage_options(["A=1", "B=x=y", "A=2"]) == {"A": "2", "B": "x=y"}

    def test_malformed_pair_is_refused_without_echoing_it(self):
        with pytest.raises(InvalidInputError) as info:
            storage.parse_storage_options(["AWS_SECRET_ACCESS_KEY"])
        assert "AWS_SECRET_ACCESS_KEY" not in str(info.value)

    def test_redaction(self):
        assert storage.redact_options({"AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu"}) == {
            "AWS_SECRET_ACCESS_KEY": "***",
            "AWS_REGION": "eu",
        }

    def test_scrub_removes_secret_values(self, monkeypatch):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret123")
        text = storage.scrub(
            "bad key optsecret456 and envsecret123 in eu-west-1",
            {"AWS_ACCESS_KEY_ID": "optsecret456", "AWS_REGION": "eu-west-1"},
        )
        assert text == "bad key *** and *** in eu-west-1"

    def test_a_client_option_keeps_the_environment_s_allow_http(self, monkeypatch, tmp_path):
        """obstore drops the environment's client settings once a client option is given."""
        keep = storage._with_allow_http_from_env
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
        assert keep({"timeout": "2s"}, "s3", {}) == {"timeout": "2s", "allow_http": "true"}
        assert keep({}, "s3", {}) == {}  # no client option: obstore reads the variable
        assert keep({"allow_http": "false"}, "s3", {}) == {"allow_http": "false"}
        account = tmp_path / "account.json"
        account.write_text('{"gcs_base_url": "http://127.0.0.1:4443"}')
        named = {"google_service_account": str(account)}
        assert keep({"timeout": "2s"}, "gs", named)["allow_http"] == "true"
        account.write_text('{"gcs_base_url": "https://storage.googleapis.com"}')
        assert "allow_http" not in keep({"timeout": "2s"}, "gs", named)

    def test_split_for_obstore(self):
        config, client, retry = storage.split_store_options(
            {
                "AWS_ENDPOINT_URL": "http://x",
                "AWS_ALLOW_HTTP": "true",
                "aws_s3_locking_provider": "dynamodb",
                "timeout": "30s",
                "max_retries": "2",
                "retry_timeout": "1500ms",
            }
        )
        assert config == {"aws_endpoint_url": "http://x"}
        assert client == {"allow_http": "true", "timeout": "30s"}
        assert retry == {"max_retries": 2, "retry_timeout": timedelta(seconds=1.5)}

    @pytest.mark.parametrize(
        ("text", "seconds"), [("3s", 3), ("2m", 120), ("250ms", 0.25), ("7", 7), ("1h", 3600)]
    )
    def test_durations(self, text, seconds):
        assert storage.parse_duration(text).total_seconds() == seconds

    def test_bad_duration(self):
        with pytest.raises(InvalidInputError, match="as a duration"):
            storage.parse_duration("soon")


class TestDeletable:
    def test_bucket_root_is_refused(self):
        with pytest.raises(InvalidInputError, match="bucket/container root"):
            storage.check_deletable(loc("s3://b"), loc("s3://other/main"), [])

    def test_file_system_root_is_refused(self):
        with pytest.raises(InvalidInputError, match="file system root"):
            storage.check_deletable(loc("/"), loc("s3://b/main"), [])

    def test_prefix_holding_main_is_refused(self):
        with pytest.raises(InvalidInputError, match="one is inside the other"):
            storage.check_deletable(loc("s3://b/lake"), loc("s3://b/lake/main"), [])

    def test_allow_list(self):
        allowed = [loc("s3://b/staging"), loc("s3://c/x")]
        storage.check_deletable(loc("s3://b/staging/run-1"), loc("s3://b/main"), allowed)
        with pytest.raises(InvalidInputError, match="outside STAGINGMERGE_ALLOWED_PREFIXES"):
            storage.check_deletable(loc("s3://b/staging-other"), loc("s3://b/main"), allowed)

    def test_allow_list_from_environment(self):
        env = {contract.ALLOWED_PREFIXES_ENV: "s3://b/staging, /tmp/x,"}
        assert [str(p) for p in storage.allowed_prefixes(env)] == [
            "s3://b/staging",
            str(Path("/tmp/x")),
        ]


def test_one_line_folds_rust_cause_chains():
    assert storage.one_line("one\n\nDebug source: {...}") == "one"
    chain = (
        "Kernel error -> Generic S3 error\n   \x1b[31m↳\x1b[0m Error performing GET\n"
        "    \x1b[31m↳\x1b[0m Connection refused (os error 111)\n"
    )
    assert storage.one_line(chain) == (
        "Kernel error -> Generic S3 error: Error performing GET: Connection refused (os error 111)"
    )
    assert len(storage.one_line("x" * 1000)) == 600


@pytest.mark.parametrize(
    ("text", "auth"),
    [
        ("Client error with status 403 Forbidden: <Code>InvalidAccessKeyId</Code>", True),
        ("Error performing GET http://h/b/k: status: 403", True),
        ("401 Unauthorized", True),
        ("AuthenticationFailed: Server failed to authenticate the request", True),
        (
            "GET http://h/b/part-00000-39c17e41-4031-4386.parquet in 5.403s: Connection refused",
            False,
        ),
        ("Error getting credentials from the instance metadata service: timeout", False),
    ],
)
def test_auth_errors_are_told_apart_from_outages(text, auth):
    assert storage.looks_like_auth_error(text) is auth


# --- issue 29: location identity by the store's rules, redaction by structure ----------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("abfss://data@MyAcct.dfs.core.windows.net/t/main", "abfss://data@myacct.dfs.core.windows.net/t/main"),
        ("az://data/t/main", "abfss://data@myacct.dfs.core.windows.net/t/main/"),
        ("abfs://data@myacct.blob.core.windows.net/t/main", "abfss://data@myacct.dfs.core.windows.net/t/main"),
        ("az://Data/t/main", "azure://data/t/main"),
        ("s3://lake/t/main/", "s3a://lake//t/./main"),
    ],
)  # fmt: skip
def test_one_location_spelled_two_ways_is_the_same(a, b):
    assert storage.parse_location(a).overlaps(storage.parse_location(b))
    assert storage.parse_location(b).contains(storage.parse_location(a + "/staging"))


def test_other_accounts_are_other_locations():
    a = storage.parse_location("abfss://data@one.dfs.core.windows.net/t")
    b = storage.parse_location("abfss://data@two.dfs.core.windows.net/t")
    assert not a.overlaps(b)


def test_urls_reach_the_stores_percent_encoded_once():
    assert storage.parse_location("s3://b/run 1/x").url == "s3://b/run%201/x"
    assert storage.parse_location("/tmp/a b").url == "file:///tmp/a%20b"
    assert storage.parse_location("file:///tmp/a%20b").path == "/tmp/a b"


@pytest.mark.parametrize("raw", ["/tmp/main%41x", "file:///tmp/a%2541", "s3://b/run%2541"])
def test_a_percent_in_a_table_path_is_refused(raw):
    with pytest.raises(InvalidInputError, match="a '%' in a table path"):
        storage.parse_location(raw)


def test_user_info_is_removed_from_any_url():
    from stagingmerge_merger import redact

    text = "via http://bob:hunter22@proxy:3128 to abfss://data:KEY123@acct.dfs.core.windows.net/x"
    assert redact.strip_userinfo(text) == (
        "via http://***@proxy:3128 to abfss://data:***@acct.dfs.core.windows.net/x"
    )
    assert redact.strip_userinfo("abfss://data@acct.dfs.core.windows.net/x") == (
        "abfss://data@acct.dfs.core.windows.net/x"
    )
    assert redact.redact_options({"proxy_url": "http://u:pw@h:1", "AWS_REGION": "eu"}) == {
        "proxy_url": "http://***@h:1",
        "AWS_REGION": "eu",
    }
    assert "pw%2Fx" not in redact.scrub("p=pw%2Fx and pw/x", {"proxy_url": "http://u:pw%2Fx@h"})


def test_unrecognized_arguments_are_shown_by_name_only():
    from stagingmerge_merger import redact

    tokens = ["--storage-options", "aws_secret_access_key=s", "--x=secret", "-v"]
    assert redact.argv_for_message(tokens) == "--storage-options *** --x=*** -v"
    assert redact.parser_message("ambiguous option: --st=abc could match") == (
        "ambiguous option: --st=*** could match"
    )
