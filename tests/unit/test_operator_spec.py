import pytest

from stagingmerge_operator.spec import InvalidSpecError, parse_spec


def spec(**extra):
    return {
        "main": {"uri": "s3://lake/main"},
        "staging": {"uri": "s3://lake/staging/run-1"},
        **extra,
    }


def test_defaults():
    parsed = parse_spec(spec())
    assert parsed.keys == ("source_url", "cert_index")
    assert parsed.batch_rows == 250_000 and parsed.delete_staging and not parsed.dry_run
    assert parsed.backoff_limit == 3 and parsed.run_policy == "Once"
    assert parsed.storage_secret is None and parsed.queue_name is None


def test_every_field():
    parsed = parse_spec(
        spec(
            keys=["id"],
            batchRows=10,
            deleteStaging=False,
            dryRun=True,
            storageSecretRef={"name": "creds"},
            storageOptions={"AWS_REGION": "eu-west-1"},
            partitionBy=["day"],
            image="img:1",
            resources={"limits": {"memory": "1Gi"}},
            serviceAccountName="sa",
            backoffLimit=0,
            activeDeadlineSeconds=60,
            ttlSecondsAfterFinished=60,
            suspend=True,
            nodeSelector={"pool": "batch"},
            tolerations=[{"key": "k", "operator": "Exists"}],
            queueName="q",
            runPolicy="OnSpecChange",
        )
    )
    assert parsed.keys == ("id",) and parsed.batch_rows == 10
    assert parsed.storage_secret == "creds" and parsed.storage_options == {
        "AWS_REGION": "eu-west-1"
    }
    assert parsed.backoff_limit == 0 and parsed.ttl_seconds_after_finished == 60
    assert parsed.suspend and parsed.queue_name == "q" and parsed.run_policy == "OnSpecChange"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"main": {}}, "spec.main.uri is required"),
        ({"staging": {"uri": " "}}, "spec.staging.uri is required"),
        ({"staging": {"uri": "s3://lake/main"}}, "same location"),
        ({"staging": {"uri": "s3://lake/main/staging"}}, "one is inside the other"),
        ({"staging": {"uri": "ftp://x/y"}}, "unsupported URI scheme"),
        ({"keys": []}, None),  # empty list falls back to the default keys (CRD requires minItems 1)
        ({"keys": ["a", "a"]}, "more than once"),
        ({"batchRows": 0}, "spec.batchRows must be positive"),
        ({"batchRows": "many"}, "spec.batchRows must be a whole number"),
        ({"backoffLimit": -1}, "spec.backoffLimit must not be negative"),
        ({"activeDeadlineSeconds": 0}, "must be positive"),
        ({"ttlSecondsAfterFinished": -1}, "spec.ttlSecondsAfterFinished must not be negative"),
        ({"parallelism": 0}, "spec.parallelism must be positive"),
        ({"parallelism": 1001}, "spec.parallelism must be at most 1000"),
        ({"runPolicy": "Always"}, "spec.runPolicy must be Once or OnSpecChange"),
        ({"storageOptions": {"a": 1}}, "spec.storageOptions must map strings to strings"),
        (
            {"storageOptions": {"AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "eu"}},
            r"spec.storageOptions holds credentials \(AWS_SECRET_ACCESS_KEY\).*storageSecretRef",
        ),
        # what an API server would refuse in the Job (admission.py)
        ({"image": "my image:1"}, "spec.image 'my image:1' is not an image reference"),
        ({"serviceAccountName": "Merge_SA"}, "spec.serviceAccountName 'Merge_SA' is not a valid"),
        ({"storageSecretRef": {"name": "a b"}}, "spec.storageSecretRef.name"),
        ({"queueName": "team queue"}, "spec.queueName 'team queue' is not a valid label value"),
        ({"nodeSelector": {"pool": "gpu-"}}, r"spec.nodeSelector.pool 'gpu-' is not a valid label"),
        ({"nodeSelector": {"bad key!": "x"}}, "spec.nodeSelector key 'bad key!'"),
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            r"spec.tolerations\[0\]: operator Exists takes no value",
        ),
        ({"tolerations": [{"operator": "Equal", "value": "v"}]}, "an empty key needs operator"),
        (
            {"tolerations": [{"key": "k", "tolerationSeconds": 5, "effect": "NoSchedule"}]},
            "tolerationSeconds needs effect NoExecute",
        ),
        ({"resources": {"limits": {"memory": "2 GB"}}}, "spec.resources.limits.memory '2 GB'"),
        (
            {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}},
            "spec.resources.requests.cpu must be less than or equal to its limit",
        ),
    ],
)
def test_invalid_specs(bad, message):
    if message is None:
        assert parse_spec(spec(**bad)).keys == ("source_url", "cert_index")
        return
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(spec(**bad))


def test_local_paths_are_refused_for_a_real_cluster():
    from stagingmerge_operator.spec import check_object_storage

    check_object_storage(parse_spec(spec()))  # s3:// is fine
    with pytest.raises(InvalidSpecError, match=r"spec\.main\.uri /lake/main is a local path"):
        check_object_storage(parse_spec(spec(main={"uri": "/lake/main"})))
