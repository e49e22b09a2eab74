"""The MQTT topics of fleet rollouts, and the broker's access rules that keep each device to its own.

Plain topics only (no ``$`` prefixes, no broker extensions), so the same scheme runs on Mosquitto,
EMQX, HiveMQ and AWS IoT Core::

    orch/v1/dev/{device}/desired/{model}  controller -> device, retained, QoS 1: signed desired state of one model
    orch/v1/dev/{device}/ack        controller -> device, QoS 1: {"upto": n}, acknowledging the device's events
    orch/v1/dev/{device}/events     device -> controller, QoS 1: one numbered event per message
    orch/v1/dev/{device}/report     device -> controller, retained, QoS 1: latest state and cumulative counters
    orch/v1/dev/{device}/presence   device -> controller, retained: "online", and the last will "offline"
    orch/v1/fleet/notice            controller -> every device, retained, QoS 1: signed fleet notices (blocks)

A device logs in with its device id as user name; the rules grant it its own five topics and the
fleet notice, the controller's user everything under ``orch/v1/``. On Mosquitto these are
``pattern`` lines with ``%u`` (``acl_lines``). Elsewhere the same rules are: EMQX's ACL with
``${username}`` in the topic (``{allow, all, subscribe, ["orch/v1/dev/${username}/desired/+"]}``);
HiveMQ's file-RBAC / Enterprise Security Extension with ``${{clientid}}`` or ``${{username}}``
placeholders; AWS IoT Core policies with ``${iot:Connection.Thing.ThingName}`` in the topic ARNs
(``iot:Subscribe`` takes ``topicfilter/``, ``iot:Receive`` and ``iot:Publish`` take ``topic/``).
"""

from __future__ import annotations

import enum
import re

from orchestrator.errors import UsageError

PREFIX = "orch/v1"
FLEET_NOTICE = f"{PREFIX}/fleet/notice"
# A device id is its MQTT user name and client id: no '/', '+' or '#', which would break the ACL's %u
# substitution (Mosquitto denies a pattern for such a name) or make a topic a filter.
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Kind(enum.Enum):
    """The per-device topics, named by their last level."""

    DESIRED = "desired"
    ACK = "ack"
    EVENTS = "events"
    REPORT = "report"
    PRESENCE = "presence"

    @property
    def from_device(self) -> bool:
        """Published by the device itself (the controller only reads it)."""
        return self in (Kind.EVENTS, Kind.REPORT, Kind.PRESENCE)


def valid_device_id(device: str) -> bool:
    return _DEVICE_ID.fullmatch(device) is not None


def check_device_id(device: str) -> str:
    if not valid_device_id(device):
        raise UsageError(f"{device!r} is not a device id: 1-64 letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit (no '/', '+', '#' or spaces)")
    return device


def device_prefix(device: str) -> str:
    """What every topic of the device starts with."""
    return f"{PREFIX}/dev/{check_device_id(device)}/"


def topic(device: str, kind: Kind) -> str:
    return f"{device_prefix(device)}{kind.value}"


def desired(device: str, model: str) -> str:
    """One retained document per model: a topic keeps one retained message, a device may run several models."""
    return f"{topic(device, Kind.DESIRED)}/{check_device_id(model)}"


def ack(device: str) -> str:
    return topic(device, Kind.ACK)


def events(device: str) -> str:
    return topic(device, Kind.EVENTS)


def report(device: str) -> str:
    return topic(device, Kind.REPORT)


def presence(device: str) -> str:
    return topic(device, Kind.PRESENCE)


def device_filters(device: str) -> list[str]:
    """What a device subscribes to: its desired state, the acknowledgements of its events, the fleet notice."""
    return [f"{topic(device, Kind.DESIRED)}/+", ack(device), FLEET_NOTICE]


# What the controller subscribes to: every device's events, reports and presence.
CONTROLLER_FILTERS: tuple[str, ...] = tuple(f"{PREFIX}/dev/+/{kind.value}" for kind in Kind if kind.from_device)


def parse(name: str) -> tuple[str, Kind] | None:
    """``(device, kind)`` for a per-device topic; None for anything else (the fleet notice included)."""
    parts = name.split("/")
    if len(parts) == 6 and parts[4] == Kind.DESIRED.value:
        parts = parts[:5]  # desired/{model}
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "dev":
        return None
    try:
        kind = Kind(parts[4])
    except ValueError:
        return None
    return (parts[3], kind) if valid_device_id(parts[3]) else None


def acl_lines(controller_user: str) -> list[str]:
    """Mosquitto's ACL file: each device its own topics (``%u`` is the user name), the controller all of
    ``orch/v1/``. Device rules are ``pattern`` lines because ``topic`` lines before the first ``user``
    line apply to anonymous clients only; a client matching no line is denied. Mosquitto 2.0 warns that
    the notice's pattern has no %u or %c: harmless, a pattern line applies to every user."""
    check_device_id(controller_user)  # the same rule: a name with spaces or newlines would inject ACL lines
    lines = [f"pattern {'write' if kind.from_device else 'read'} {PREFIX}/dev/%u/{kind.value}"
             + ("/+" if kind is Kind.DESIRED else "") for kind in Kind]
    return [*lines, f"pattern read {FLEET_NOTICE}", f"user {controller_user}", f"topic readwrite {PREFIX}/#"]
