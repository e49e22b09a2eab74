"""Which wave each selected device belongs to: stable, and spread across label groups. Pure.

A device's place depends only on the rollout id, its id and the groups of the plan's ``spread``
labels: the same plan assigns the same devices after a restart, and no two rollouts always pick
the same first devices. Within each group devices are ordered by a hash; a device at rank r of a
group of n sits at (r + 0.5) / n, and the fleet is taken in that order, so a 10 % wave holds about
10 % of every group (of every site, every hardware) rather than 10 % of whichever came first.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping

from orchestrator.fleet.plan import Plan


def _hash(rollout: str, device: str) -> str:
    return hashlib.sha256(f"{rollout}\0{device}".encode()).hexdigest()


def spread_order(rollout: str, devices: Mapping[str, Mapping[str, str]], spread: tuple[str, ...]) -> list[str]:
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for device, labels in devices.items():
        groups[tuple(labels.get(key, "") for key in spread)].append(device)
    placed = []
    for members in groups.values():
        members.sort(key=lambda d: _hash(rollout, d))
        placed += [((rank + 0.5) / len(members), _hash(rollout, d), d) for rank, d in enumerate(members)]
    return [device for _, _, device in sorted(placed)]


def wave_targets(plan: Plan, total: int) -> list[int]:
    """The cumulative number of devices told once each percent wave starts (None for selector waves)."""
    return [math.ceil(w.percent / 100.0 * total - 1e-9) if w.percent is not None else -1 for w in plan.waves]


def assign_waves(plan: Plan, devices: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Device -> wave index for every device the plan's selector takes (``devices``: id -> labels)."""
    selected = {d: labels for d, labels in devices.items() if plan.selector.matches(labels)}
    assigned: dict[str, int] = {}
    order = spread_order(plan.id, selected, plan.spread)
    targets = wave_targets(plan, len(selected))
    for index, wave in enumerate(plan.waves):
        if wave.selector is not None:
            for device in order:
                if device not in assigned and wave.selector.matches(selected[device]):
                    assigned[device] = index
            continue
        need = targets[index] - len(assigned)
        for device in order:
            if need <= 0:
                break
            if device not in assigned:
                assigned[device] = index
                need -= 1
    return assigned
