from stagingmerge_operator.config import load
from stagingmerge_operator.jobs import build_job, job_name, label_value, main_key, merge_args
from stagingmerge_operator.spec import parse_spec

MERGE = {"metadata": {"name": "run-1", "namespace": "ct", "uid": "u-1", "generation": 3}}
CONFIG = load(
    {
        "STAGINGMERGE_DEFAULT_IMAGE": "ghcr.io/stagingmerge/merge:1",
        "STAGINGMERGE_ALLOWED_PREFIXES": "s3://lake/staging",
        "STAGINGMERGE_MERGE_SERVICE_ACCOUNT": "stagingmerge-merge",
        "STAGINGMERGE_JOB_TTL_SECONDS": "600",
    }
)


def job(**spec):
    base = {"main": {"uri": "s3://lake/main"}, "staging": {"uri": "s3://lake/staging/r1"}}
    return build_job(merge=MERGE, spec=parse_spec({**base, **spec}), config=CONFIG)


def test_name_is_fixed_by_resource_and_generation():
    assert job_name("run-1", 3) == "run-1-g3"
    long = job_name("x" * 80, 12)
    assert len(long) <= 63 and long.endswith("-g12") and long != job_name("x" * 81, 12)
    # a name that is not a DNS label as it stands gets a hash: two names never share a Job
    assert job_name("a-b", 1) == "a-b-g1"
    assert job_name("a.b", 1).startswith("a-b-") and job_name("a.b", 1) != job_name("a-b", 1)
    assert all(len(job_name(n, 99)) <= 63 for n in ("a." * 120, "b" * 253))
    assert job()["metadata"]["name"] == "run-1-g3"


def test_main_key_is_label_safe_and_ignores_a_trailing_slash():
    key = main_key("s3://lake/main")
    assert key == main_key("s3://lake/main/") and len(key) == 32 and key.isalnum()


def test_owner_reference_labels_and_annotations():
    body = job(queueName="batch")
    meta = body["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "stagingmerge.io/v1alpha1",
            "kind": "StagingMerge",
            "name": "run-1",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "batch"
    assert meta["labels"]["stagingmerge.io/main"] == main_key("s3://lake/main")
    assert meta["annotations"]["stagingmerge.io/main-uri"] == "s3://lake/main"
    assert body["spec"]["suspend"] is True  # Kueue admits by unsuspending


def test_pod_failure_policy_fails_at_once_on_exit_code_2_and_ignores_disruptions():
    rules = job()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "merge", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert job()["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_container_runs_the_merge_with_the_spec():
    body = job(
        keys=["id"],
        batchRows=5,
        deleteStaging=False,
        dryRun=True,
        storageSecretRef={"name": "creds"},
        storageOptions={"AWS_REGION": "eu"},
        resources={"limits": {"memory": "2Gi"}},
        image="mine:2",
    )
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["stagingmerge-merge"]
    assert container["args"] == [
        "--main",
        "s3://lake/main",
        "--staging",
        "s3://lake/staging/r1",
        "--keys",
        "id",
        "--batch-rows",
        "5",
        "--log-format",
        "json",
        "--keep-staging",
        "--dry-run",
    ]
    # storage options travel in the environment, never on the command line (ps, pod specs)
    assert {"name": "STAGINGMERGE_STORAGE_OPTIONS", "value": '{"AWS_REGION": "eu"}'} in container[
        "env"
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert {"name": "STAGINGMERGE_ALLOWED_PREFIXES", "value": "s3://lake/staging"} in container[
        "env"
    ]
    assert container["image"] == "mine:2" and container["resources"]["limits"]["memory"] == "2Gi"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "stagingmerge-merge"


def test_job_knobs():
    spec = job(
        backoffLimit=1,
        activeDeadlineSeconds=99,
        nodeSelector={"a": "b"},
        tolerations=[{"key": "k", "operator": "Exists"}],
    )["spec"]
    assert spec["backoffLimit"] == 1 and spec["activeDeadlineSeconds"] == 99
    assert spec["ttlSecondsAfterFinished"] == 600  # the operator's, for every Job
    # the StagingMerge's own TTL is the operator's to act on (its Job goes with it)
    assert job(ttlSecondsAfterFinished=65)["spec"]["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"a": "b"} and pod["tolerations"][0]["key"] == "k"
    assert "suspend" not in job()["spec"]


def test_one_pod_unless_parallel():
    spec = job()["spec"]
    assert "completionMode" not in spec and spec["backoffLimit"] == 3
    assert "--shards" not in spec["template"]["spec"]["containers"][0]["args"]


def test_a_parallel_merge_is_an_indexed_job_of_shards_retried_one_by_one():
    spec = job(parallelism=4, backoffLimit=2)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--shards") + 1] == "4"
    # bad input in any shard is bad input for all: the whole Job fails at once
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"


def test_merge_args_partition_by():
    spec = parse_spec({"main": {"uri": "/m"}, "staging": {"uri": "/s"}, "partitionBy": ["d"]})
    assert merge_args(spec)[-2:] == ["--partition-by", "d"]


def test_merge_args_first_by():
    spec = parse_spec({"main": {"uri": "/m"}, "staging": {"uri": "/s"}, "firstBy": ["seen", "x"]})
    assert merge_args(spec)[-2:] == ["--first-by", "seen,x"]


def test_label_values_built_from_names_are_always_valid():
    import re

    valid = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
    for name in ("run-1", "a" * 62 + "-" + "b" * 40, "x" * 62 + ".y", "a." * 100 + "z"):
        value = label_value(name)
        assert len(value) <= 63 and valid.fullmatch(value), value
    assert label_value("run-1") == "run-1"
    assert label_value("a" * 62 + "-" + "b") != label_value("a" * 62 + "-" + "c")


def test_jobs_are_never_best_effort_nor_unbounded_and_run_as_the_image_user():
    body = job()
    pod = body["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]  # Burstable
    assert body["spec"]["activeDeadlineSeconds"] == 86_400  # the operator's default
    assert pod["securityContext"]["runAsUser"] == 10001 == pod["securityContext"]["runAsGroup"]
    assert "imagePullSecrets" not in pod
    own = job(resources={"requests": {"cpu": "2"}}, activeDeadlineSeconds=60)
    assert own["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2"}
    }
    assert own["spec"]["activeDeadlineSeconds"] == 60


def test_the_merge_service_account_is_named_only_where_it_exists():
    from dataclasses import replace

    from stagingmerge_operator.jobs import build_job as build
    from stagingmerge_operator.spec import parse_spec as parse

    merge = {"metadata": {"name": "m", "namespace": "ct-lake", "uid": "u", "generation": 1}}
    spec = parse({"main": {"uri": "s3://l/m"}, "staging": {"uri": "s3://l/s"}})
    only_home = replace(CONFIG, merge_service_account_namespaces=("stagingmerge",))
    pod = build(merge=merge, spec=spec, config=only_home)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod  # the namespace's default account
    home = {"metadata": {**merge["metadata"], "namespace": "stagingmerge"}}
    pod = build(merge=home, spec=spec, config=only_home)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == CONFIG.merge_service_account
