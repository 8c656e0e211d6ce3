from stagingmerge_operator.leader import CREATE, RENEW, TAKE, WAIT, decide


def lease(holder, renewed, duration=15):
    return {
        "spec": {
            "holderIdentity": holder,
            "renewTime": renewed,
            "leaseDurationSeconds": duration,
        }
    }


NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
FRESH = "2027-01-15T07:59:55.000000Z"  # 5 s ago
STALE = "2027-01-15T07:59:00Z"  # a minute ago


def test_who_may_hold_the_lease():
    assert decide(None, "me", NOW, 15) == CREATE
    assert decide(lease("me", STALE), "me", NOW, 15) == RENEW
    assert decide(lease("other", FRESH), "me", NOW, 15) == WAIT
    assert decide(lease("other", STALE), "me", NOW, 15) == TAKE  # expired
    assert decide(lease("", FRESH), "me", NOW, 15) == TAKE  # released
    assert decide(lease("other", FRESH, duration=2), "me", NOW, 15) == TAKE  # its own duration
