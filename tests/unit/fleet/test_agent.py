"""The fleet agent on a twin-backed device: installs through the local gates, bakes, reverts, refuses.

Each test drives the sans-I/O agent with signed documents as bytes and reads the events it would
publish; the repository, journal and twin are real, the clock virtual (``agentkit.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.core.journal import Action, Result
from orchestrator.errors import UsageError
from orchestrator.fleet import agent_state, topics
from orchestrator.fleet.documents import REVERT, PackageRef
from orchestrator.sample import Variant, write_sample_package
from tests.conftest import BuildKey
from tests.unit.usecases.conftest import MODEL, nan_logits

from .agentkit import DEVICE, Device, Site, kinds, make_env, of, serve_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def device(tmp_path: Path, build_key: BuildKey, packages: dict[Variant, Path], monkeypatch: pytest.MonkeyPatch,
           site: Site) -> Device:
    return Device(make_env(tmp_path, build_key, packages, monkeypatch), site)


def imports(device: Device) -> list[int | None]:
    return [r.to_version for r in device.env.records() if r.action is Action.IMPORT and r.result is Result.SUCCEEDED]


def fleet_records(device: Device, result: Result | None = None) -> list[str]:
    return [r.reason for r in device.env.records() if r.action is Action.FLEET and result in (None, r.result)]


def test_an_install_is_applying_then_serving_then_verified_after_a_clean_bake(device: Device) -> None:
    doc = device.desired(bake_s=60)
    found = device.send(doc)
    assert kinds(found) == ["applying", "serving"]
    applying, serving = found
    assert (applying["seq"], serving["seq"]) == (1, 2)
    assert (serving["rollout"], serving["serial"], serving["version"], serving["device"]) == ("r1", 1, 2, DEVICE)
    assert applying["version"] == 1  # what served when it started
    golden = serving["data"]
    assert golden["golden"] > 0.8 and golden["golden_diff"] > 0  # BETTER scores above the baseline it replaced
    assert device.env.served_by_twin() == 2 and imports(device) == [2]
    assert not (device.env.state / "fleet" / "downloads" / doc["package"]["sha256"]).exists()  # removed once filed

    assert kinds(device.tick(30)) == []  # half the bake: nothing yet, the journal mirrored
    assert of(device.tick(1.0), "journal") == []  # mirrored once, at the first tick
    verified = of(device.tick(30), "verified")
    assert [(e["version"], e["serial"], e["rollout"]) for e in verified] == [(2, 1, "r1")]
    assert kinds(device.tick(60)) == []  # once
    assert device.env.outcomes("promote")[-1] == "succeeded"
    reasons = fleet_records(device)
    assert any("accepted install" in r for r in reasons) and any("verified for the fleet" in r for r in reasons)


def test_the_journal_is_mirrored_as_events(device: Device) -> None:
    device.send(device.desired())
    mirrored = of(device.tick(1.0), "journal")
    actions = [(e["data"]["action"], e["data"]["result"]) for e in mirrored]
    assert ("import", "succeeded") in actions and ("promote", "succeeded") in actions
    assert ("fleet", "step") in actions
    promoted = next(e for e in mirrored if e["data"]["action"] == "promote" and e["data"]["result"] == "succeeded")
    assert (promoted["data"]["from"], promoted["data"]["to"], promoted["data"]["actor"]) == (1, 2, "fleet")
    seqs = [e["seq"] for e in mirrored]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # numbered on, after applying and serving
    assert of(device.tick(1.0), "journal") == []  # each record once


def test_a_package_the_local_gates_refuse_fails_with_cause_promote_and_serving_is_unchanged(device: Device) -> None:
    found = device.send(device.desired(variant=Variant.NAN))
    assert kinds(found) == ["applying", "failed"]
    failed = found[-1]
    assert failed["data"] == {"cause": "promote"} and "not promoted" in failed["detail"]
    assert "\n" not in failed["detail"] and failed["version"] == 2
    assert device.env.served_by_twin() == 1 and device.env.status(2) == "failed"
    assert kinds(device.tick(3600)) == []  # nothing to bake
    assert device.report()["models"][MODEL]["served"] == 1


def test_a_download_that_fails_is_cause_fetch(device: Device) -> None:
    missing = PackageRef(f"{device.site.base}/no-such-package.tar.gz", "0" * 64)
    found = device.send(device.desired(package=missing))
    assert kinds(found) == ["applying", "failed"] and found[-1]["data"]["cause"] == "fetch"
    assert imports(device) == [] and device.env.served_by_twin() == 1


def test_revert_rolls_back_to_the_version_served_before(device: Device) -> None:
    install = device.desired(bake_s=10)
    device.send(install)
    found = device.send(device.desired(REVERT, revert_to=1, package=PackageRef(**install["package"]), rollout="r1"))
    assert kinds(found) == ["reverted"]
    assert found[0]["detail"] == "rolled back v2 -> v1" and found[0]["version"] == 1
    assert device.env.served_by_twin() == 1
    rollback = device.env.last("rollback")
    assert rollback.reason == "fleet: rollout r1 reverted" and rollback.actor == "fleet"
    assert kinds(device.tick(60)) == []  # the install it replaced bakes no more: no verified, no failed
    # The old install document again (a resend): refused as replayed, nothing installed.
    again = device.send(install)
    assert kinds(again) == ["refused"] and again[0]["data"]["reason"] == "replayed"
    assert device.env.served_by_twin() == 1


def test_revert_with_nothing_to_do_says_so(device: Device) -> None:
    never = device.send(device.desired(REVERT, revert_to=1, variant=Variant.WORSE))
    assert kinds(never) == ["reverted"] and "never installed" in never[0]["detail"]
    install = device.desired()
    device.send(install)
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: error_rate", quarantine=True)
    first = device.send(device.desired(REVERT, revert_to=1, package=PackageRef(**install["package"])))
    assert kinds(first) == ["reverted"] and first[0]["detail"] == "v1 serves already (v2 rolled back before)"


def test_a_watcher_rollback_after_serving_fails_the_install_with_cause_rollback(device: Device) -> None:
    device.send(device.desired(bake_s=60))
    device.tick(1.0)
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: output_sanity (LOGITS NaN)",
                                                    quarantine=True, evidence={"rule": "output_sanity"})
    found = device.tick(1.0)
    assert kinds(found) == ["failed"]
    failed = next(e for e in found if e["kind"] == "failed")
    assert failed["data"] == {"cause": "rollback"} and failed["detail"] == "watch: output_sanity (LOGITS NaN)"
    assert (failed["version"], failed["serial"]) == (2, 1)
    assert [e["data"]["action"] for e in found if e["kind"] == "journal"].count("rollback") >= 1
    assert kinds(device.tick(120)) == []  # never verified
    assert device.report()["models"][MODEL]["versions"]["2"]["rollbacks"] == 1


def test_a_rollback_after_the_bake_fails_a_verified_install(device: Device) -> None:
    device.send(device.desired(bake_s=5))
    assert kinds(device.tick(6)) == ["verified"]
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: latency", quarantine=True)
    assert kinds(device.tick(1.0)) == ["failed"]


def forged(device: Device) -> bytes:
    """Signed by another key under the controller's key id."""
    sealed = device.sealed(device.desired())
    other = device.sealed(device.desired(serial=1), Ed25519PrivateKey.generate())
    envelope, theirs = json.loads(sealed), json.loads(other)
    envelope["sig"] = theirs["sig"]
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(("case", "reason", "signed"), [
    ("forged", "bad signature", False),
    ("untrusted", "untrusted key", False),
    ("unsigned", "unsigned", False),
    ("malformed", "malformed", False),
    ("replayed", "replayed", True),
    ("expired", "expired", True),
    ("misaddressed", "misaddressed", True),
])
def test_a_refused_document_is_journaled_and_reported_and_changes_nothing(device: Device, case: str, reason: str,
                                                                         signed: bool) -> None:
    if case == "replayed":  # serial 5 applied first: 4 is older
        device.send(device.desired(serial=5, variant=Variant.WORSE, bake_s=1))
    before_state = (device.env.state / "fleet" / agent_state.STATE_FILE).read_bytes()
    before_served = device.env.served_by_twin()
    payload = {
        "forged": lambda: forged(device),
        "untrusted": lambda: device.sealed(device.desired(), Ed25519PrivateKey.generate()),
        "unsigned": lambda: b'{"doc": {"kind": "desired"}}',
        "malformed": lambda: b"not json at all",
        "replayed": lambda: device.sealed(device.desired(serial=4)),
        "expired": lambda: device.sealed(device.desired(expires_in=-1)),
        "misaddressed": lambda: device.sealed(device.desired(device="cam-018")),
    }[case]()
    found = device.deliver(topics.desired(DEVICE, MODEL), payload)
    assert kinds(found) == ["refused"]
    refused = found[0]
    assert refused["data"]["reason"] == reason and refused["data"]["document"] == "desired"
    if signed:
        assert refused["rollout"] == "r1" and isinstance(refused["serial"], int)
    else:
        assert (refused["rollout"], refused["serial"]) == (None, None)
    assert device.agent.pending_jobs() == [] and device.env.served_by_twin() == before_served
    state = agent_state.AgentState.from_json(json.loads(before_state))
    after = device.agent.state
    assert after.models[MODEL].serial == state.models.get(MODEL, agent_state.ModelState()).serial
    # In the journal of the model whose topic it came on, which the agent mirrors to the controller too.
    refusal = [r for r in device.env.records() if r.action is Action.FLEET and r.result is Result.REFUSED]
    assert len(refusal) == 1 and reason in refusal[0].reason and refusal[0].details["reason"] == reason
    assert refusal[0].actor == "fleet"


def test_a_document_for_a_model_the_fleet_does_not_drive_is_misaddressed(device: Device) -> None:
    doc = device.desired()
    doc["model"] = "detector"
    found = device.deliver(topics.desired(DEVICE, "detector"), device.sealed(doc))
    assert kinds(found) == ["refused"] and found[0]["data"]["reason"] == "misaddressed"
    assert "not one the fleet drives" in found[0]["detail"]


def test_the_same_serial_after_completion_is_ignored_across_a_restart(device: Device) -> None:
    doc = device.desired(bake_s=1)
    device.send(doc)
    assert kinds(device.tick(2)) == ["verified"]
    assert device.send(doc) == [] and device.agent.pending_jobs() == []
    device.start()  # the retained document arrives again after a restart
    assert device.send(doc) == [] and device.agent.pending_jobs() == []
    assert imports(device) == [2] and [r.to_version for r in device.env.records()
                                       if r.action is Action.PROMOTE and r.result is Result.SUCCEEDED] == [2]
    assert kinds(device.tick(10)) == []


class Crash(BaseException):
    """The device lost power here."""


def test_a_restart_mid_apply_resumes_without_a_second_import(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = device.desired(bake_s=1)
    orch = device.agent.orch

    def dies(model: str | None, version: int, force: bool = False, retry: bool = False) -> object:
        raise Crash

    monkeypatch.setattr(orch, "promote", dies)
    with pytest.raises(Crash):
        device.send(doc)
    assert imports(device) == [2] and device.env.served_by_twin() == 1
    device.start()
    assert [(j.kind, j.key) for j in device.agent.pending_jobs()] == [("install", "1")]  # queued again at start
    found = device.send(doc)  # the retained document again: the same job, run once
    assert kinds(found) == ["serving"] and found[0]["version"] == 2
    assert device.env.served_by_twin() == 2 and imports(device) == [2]


def test_a_kill_after_the_import_filed_but_before_the_agent_saved_is_not_imported_again(
        device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = device.desired(bake_s=1)
    orch = device.agent.orch
    real = orch.import_package

    def filed_then_dies(path: Path) -> object:
        real(path)
        raise Crash

    monkeypatch.setattr(orch, "import_package", filed_then_dies)
    with pytest.raises(Crash):
        device.send(doc)
    assert imports(device) == [2] and device.agent.state.models[MODEL].installed == {}
    device.start()
    found = device.send(doc)
    assert kinds(found) == ["serving"] and found[0]["version"] == 2
    assert imports(device) == [2] and device.env.served_by_twin() == 2


def test_a_kill_after_the_promote_but_before_the_agent_saved_is_not_promoted_again(
        device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = device.desired(bake_s=60)
    orch = device.agent.orch
    real = orch.promote

    def switched_then_dies(model: str | None, version: int, force: bool = False, retry: bool = False) -> object:
        real(model, version)
        raise Crash

    monkeypatch.setattr(orch, "promote", switched_then_dies)
    with pytest.raises(Crash):
        device.send(doc)
    # Meanwhile (the agent down) the watcher rolled it back: the resumed install must not promote it again.
    device.env.orchestrator(actor="watch").rollback(MODEL, reason="watch: error_rate", quarantine=True)
    device.start()
    found = device.send(doc)
    assert kinds(found) == ["serving"]
    assert kinds(device.tick(1.0)) == ["failed"]
    assert device.env.served_by_twin() == 1
    assert [r.to_version for r in device.env.records()
            if r.action is Action.PROMOTE and r.result is Result.SUCCEEDED] == [2]


def test_a_newer_document_supersedes_one_in_progress(device: Device) -> None:
    install = device.desired()
    device.agent.on_message(topics.desired(DEVICE, MODEL), device.sealed(install))
    revert = device.desired(REVERT, revert_to=1, package=PackageRef(**install["package"]))
    found = device.send(revert)  # the install's job finds itself superseded: only the revert runs
    assert kinds(found) == ["reverted"] and "never installed" in found[0]["detail"]
    assert imports(device) == [] and device.env.served_by_twin() == 1


def test_a_bad_version_on_the_twin_rolls_back_locally_and_the_fleet_hears_of_it(device: Device) -> None:
    """The watcher's guarantee needs no uplink: the agent only tells what the journal says."""
    device.send(device.desired(bake_s=60))
    device.env.backends.turn_bad(MODEL, 2, nan_logits)
    watcher, _ = device.env.watcher()
    device.env.ticks(watcher, 3)
    assert device.env.served_by_twin() == 1
    found = device.tick(1.0)
    assert kinds(found) == ["failed"] and found[-1]["data"]["cause"] == "rollback"


def test_a_package_the_import_refuses_is_cause_import_and_is_not_kept(device: Device, tmp_path: Path) -> None:
    """Package signatures are still checked: an unsigned package is refused by the same import as the CLI's."""
    url, sha = device.site.add("unsigned", write_sample_package(tmp_path / "unsigned", Variant.BETTER))
    found = device.send(device.desired(package=PackageRef(url, sha)))
    assert kinds(found) == ["applying", "failed"] and found[-1]["data"] == {"cause": "import"}
    assert "refused" in found[-1]["detail"] and device.env.served_by_twin() == 1
    assert not (device.env.state / "fleet" / "downloads" / sha).exists()


def test_an_agent_refuses_to_start_when_its_controller_key_is_also_a_package_key(device: Device) -> None:
    trusted = device.env.state / "trusted_keys"
    (trusted / "controller.pub").write_bytes(device.controller.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(UsageError, match=r"trusted both as a package key \(.*trusted_keys\) and as a controller key"):
        device.start()
    (trusted / "controller.pub").unlink()
    assert device.start() is not None
