"""The topic scheme and the broker's ACL text, as pure functions."""

from __future__ import annotations

import pytest

from orchestrator.errors import UsageError
from orchestrator.fleet import topics
from orchestrator.fleet.topics import Kind


def test_each_device_topic_is_spelled_as_documented() -> None:
    assert topics.desired("jetson-07", "classifier") == "orch/v1/dev/jetson-07/desired/classifier"
    assert topics.ack("jetson-07") == "orch/v1/dev/jetson-07/ack"
    assert topics.events("jetson-07") == "orch/v1/dev/jetson-07/events"
    assert topics.report("jetson-07") == "orch/v1/dev/jetson-07/report"
    assert topics.presence("jetson-07") == "orch/v1/dev/jetson-07/presence"
    assert topics.FLEET_NOTICE == "orch/v1/fleet/notice"


def test_who_subscribes_to_what() -> None:
    assert topics.CONTROLLER_FILTERS == ("orch/v1/dev/+/events", "orch/v1/dev/+/report", "orch/v1/dev/+/presence")
    assert topics.device_filters("d1") == ["orch/v1/dev/d1/desired/+", "orch/v1/dev/d1/ack", "orch/v1/fleet/notice"]
    assert [kind for kind in Kind if kind.from_device] == [Kind.EVENTS, Kind.REPORT, Kind.PRESENCE]


@pytest.mark.parametrize("kind", list(Kind))
def test_parse_inverts_topic(kind: Kind) -> None:
    assert topics.parse(topics.topic("dev.1_a-B", kind)) == ("dev.1_a-B", kind)


def test_parse_reads_a_models_desired_state_as_desired() -> None:
    assert topics.parse(topics.desired("d1", "detector_nms")) == ("d1", Kind.DESIRED)


@pytest.mark.parametrize("name", [
    "orch/v1/fleet/notice",            # not a device topic
    "orch/v2/dev/d1/events",           # another version of the scheme
    "orch/v1/dev/d1/events/extra",     # one level too many
    "orch/v1/dev/d1/desired/m/extra",
    "orch/v1/dev/d1",                  # one too few
    "orch/v1/dev/d1/firmware",         # no such kind
    "orch/v1/dev/+/events",            # a filter, not a topic
    "orch/v1/dev/-d1/events",          # not a device id
    "orch/v1/device/d1/events",
    "",
])
def test_parse_refuses_anything_else(name: str) -> None:
    assert topics.parse(name) is None


@pytest.mark.parametrize("device", ["d", "D1", "jetson-orin.07", "a_b", "9" * 64, "x" + "-" * 63])
def test_valid_device_ids(device: str) -> None:
    assert topics.valid_device_id(device)
    assert topics.check_device_id(device) == device


@pytest.mark.parametrize("device", ["", "a/b", "a+b", "a#", "+", "#", "-lead", ".lead", "_lead", "a b", "a\nb",
                                    "ü", "x" * 65, "$SYS", "a:b"])
def test_invalid_device_ids_are_refused_with_the_rule(device: str) -> None:
    assert not topics.valid_device_id(device)
    with pytest.raises(UsageError, match="is not a device id: 1-64 letters, digits"):
        topics.check_device_id(device)
    with pytest.raises(UsageError):
        topics.desired(device, "classifier")
    with pytest.raises(UsageError):
        topics.desired("d1", device)  # a model name goes into the topic too


def test_the_acl_gives_each_device_its_own_topics_and_the_controller_all() -> None:
    assert topics.acl_lines("orch-controller") == [
        "pattern read orch/v1/dev/%u/desired/+",
        "pattern read orch/v1/dev/%u/ack",
        "pattern write orch/v1/dev/%u/events",
        "pattern write orch/v1/dev/%u/report",
        "pattern write orch/v1/dev/%u/presence",
        "pattern read orch/v1/fleet/notice",
        "user orch-controller",
        "topic readwrite orch/v1/#",
    ]


def test_a_controller_name_cannot_inject_acl_lines() -> None:
    with pytest.raises(UsageError):
        topics.acl_lines("controller\ntopic readwrite #")
