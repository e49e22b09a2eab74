"""Version labels on the twin: moved only to what is READY (or a verified version loaded beside the served
one), carried by promote and rollback, kept loaded while labelled, taken by every verb as a version."""

from __future__ import annotations

import pytest

from orchestrator.errors import PolicyViolation, UsageError
from orchestrator.sample import Variant
from orchestrator.store.labels import LABELS_FILE, read_labels

from .conftest import MODEL, Env


def labels(env: Env) -> dict[str, int]:
    return read_labels(env.store().state)


def test_promote_and_rollback_move_stable(env: Env) -> None:
    env.promote_better()
    assert labels(env) == {"stable": 2}
    assert env.last("promote").details["labels"] == {"stable": 2}
    env.orchestrator().rollback(MODEL)
    assert labels(env) == {"stable": 1}


def test_a_label_on_the_fallback_keeps_it_loaded_through_the_next_promote(env: Env) -> None:
    env.promote_better()  # v2 serves, v1 its fallback
    orch = env.orchestrator()
    assert orch.label(MODEL, "ab-control", 1) == ({"ab-control": 1, "stable": 2}, False)
    assert env.import_(Variant.BETTER) == 3  # as good as v2: it passes
    env.orchestrator().promote(MODEL, 3)
    # keep_resident 1: v2 is the new fallback, and v1 stays loaded for its label.
    assert env.store().resident() == (1, 2, 3) and env.ready() == {1, 2, 3} and env.served_by_twin() == 3
    assert labels(env) == {"ab-control": 1, "stable": 3}
    record = env.last("label")
    assert (record.to_version, record.details["label"], record.details["loaded"]) == (1, "ab-control", False)


def test_a_label_loads_a_verified_version_below_the_served_one(env: Env) -> None:
    env.promote_better()
    assert env.import_(Variant.BETTER) == 3  # as good as v2: it passes
    env.orchestrator().promote(MODEL, 3)  # v1 unloaded: one fallback (v2) is kept
    assert env.ready() == {2, 3}
    assert env.orchestrator().label(MODEL, "old", 1)[1] is True
    assert env.ready() == {1, 2, 3} and env.served_by_twin() == 3  # loaded beside, serving unchanged
    assert env.store().resident() == (1, 2, 3)


def test_a_label_never_makes_a_version_serve_or_loads_an_unverified_one(env: Env) -> None:
    env.promote_better()
    assert env.import_(Variant.BASELINE) == 3  # filed, never verified, above the served v2
    orch = env.orchestrator()
    with pytest.raises(PolicyViolation, match="above the served v2"):
        orch.label(MODEL, "canary", 3)
    with pytest.raises(PolicyViolation, match="'stable' follows the served version"):
        orch.label(MODEL, "stable", 1)
    with pytest.raises(UsageError, match="not a label name"):
        orch.label(MODEL, "v3", 2)
    assert env.ready() == {1, 2} and labels(env) == {"stable": 2}
    assert env.outcomes("label") == []


def test_rolling_back_from_a_labelled_version_removes_its_label(env: Env) -> None:
    env.promote_better()
    orch = env.orchestrator()
    orch.label(MODEL, "canary", 2)
    orch.rollback(MODEL)
    assert labels(env) == {"stable": 1}
    assert env.last("rollback").details["labels_removed"] == {"canary": 2}


def test_every_verb_takes_a_label_as_a_version(env: Env) -> None:
    env.promote_better()
    orch = env.orchestrator()
    orch.label(MODEL, "ab-control", 1)
    assert orch.resolve_version(MODEL, "ab-control") == 1
    assert orch.resolve_version(MODEL, "stable") == 2
    assert orch.resolve_version(MODEL, "v2") == 2 and orch.resolve_version(MODEL, "2") == 2
    with pytest.raises(UsageError, match=r"neither a version \(v<N>\) nor a label of classifier \(labels: "
                                         r"ab-control \(v1\), stable \(v2\)\)"):
        orch.resolve_version(MODEL, "canary")
    orch.rollback(MODEL, to=orch.resolve_version(MODEL, "ab-control"))
    assert env.served_by_twin() == 1


def test_removing_a_label_lets_the_next_switch_unload_its_version(env: Env) -> None:
    env.promote_better()
    orch = env.orchestrator()
    orch.label(MODEL, "ab-control", 1)
    assert orch.unlabel(MODEL, "ab-control") == 1
    assert orch.unlabel(MODEL, "ab-control") is None
    with pytest.raises(UsageError, match="'stable' follows the served version"):
        orch.unlabel(MODEL, "stable")
    assert env.import_(Variant.BETTER) == 3
    orch.promote(MODEL, 3)
    assert env.store().resident() == (2, 3)


def test_an_unreadable_labels_file_does_not_stop_a_rollback(env: Env) -> None:
    env.promote_better()
    (env.store().state / LABELS_FILE).write_text("{broken")
    result = env.orchestrator().rollback(MODEL)
    assert result.to_version == 1 and env.served_by_twin() == 1
    assert "labels_error" in env.last("rollback").details
    [status] = env.orchestrator().status(MODEL)
    assert "unreadable" in status.labels_error
