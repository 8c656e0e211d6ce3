import pytest

from stagingmerge_operator.config import ConfigError, load

BASE = {"STAGINGMERGE_DEFAULT_IMAGE": "img:1"}


def test_defaults():
    config = load(BASE)
    assert config.clusterwide and config.queue_poll_seconds == 15
    assert config.metrics_port == 9090 and config.liveness_port == 8080
    assert config.job_ttl_seconds is None and config.log_format == "json"


def test_namespaces():
    config = load({**BASE, "STAGINGMERGE_NAMESPACES": "a, b,"})
    assert config.namespaces == ("a", "b") and not config.clusterwide


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "STAGINGMERGE_DEFAULT_IMAGE must name the merge image"),
        ({**BASE, "STAGINGMERGE_METRICS_PORT": "x"}, "STAGINGMERGE_METRICS_PORT must be a whole"),
        ({**BASE, "STAGINGMERGE_TERMINATION_GRACE_SECONDS": "0"}, "must be at least 1"),
        ({**BASE, "STAGINGMERGE_QUEUE_POLL_SECONDS": "-1"}, "must be positive"),
        ({**BASE, "STAGINGMERGE_LOG_FORMAT": "xml"}, "must be json, text or full"),
        ({**BASE, "STAGINGMERGE_ALLOWED_PREFIXES": "ftp://x"}, "ALLOWED_PREFIXES: unsupported"),
        ({**BASE, "STAGINGMERGE_MAX_CONCURRENT_PER_MAIN": "0"}, "PER_MAIN must be at least 1"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load(env)


def test_merge_job_defaults_from_the_environment():
    config = load(
        {
            "STAGINGMERGE_DEFAULT_IMAGE": "x",
            "STAGINGMERGE_DEFAULT_RESOURCES": '{"requests": {"cpu": "1"}}',
            "STAGINGMERGE_MERGE_IMAGE_PULL_SECRETS": "a, b",
            "STAGINGMERGE_JOB_DEADLINE_SECONDS": "600",
        }
    )
    assert config.default_resources == {"requests": {"cpu": "1"}}
    assert config.image_pull_secrets == ("a", "b") and config.job_deadline_seconds == 600
    for name, value, message in [
        ("DEFAULT_RESOURCES", "{", "is not JSON"),
        ("DEFAULT_RESOURCES", '{"cpu": 1}', "must be an object of requests and limits"),
        ("JOB_TTL_SECONDS", "5", "STAGINGMERGE_JOB_TTL_SECONDS must be at least 60"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load({"STAGINGMERGE_DEFAULT_IMAGE": "x", f"STAGINGMERGE_{name}": value})


def test_one_merge_per_main_unless_raised():
    assert load(BASE).max_concurrent_per_main == 1
    assert load({**BASE, "STAGINGMERGE_MAX_CONCURRENT_PER_MAIN": "4"}).max_concurrent_per_main == 4
