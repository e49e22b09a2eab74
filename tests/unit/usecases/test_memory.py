"""Memory before the third engine, and no reload of a version whose load failed, on the twin.

Where a test needs the device's memory to move as versions load and unload it runs on a
simulated device (``SimulatedDevice``: a fixed pool, each loaded instance taking its share),
because this machine's own MemAvailable cannot be made to; the refusal of a candidate larger than
the machine has reads the machine's real /proc/meminfo.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.core.memory import MIB
from orchestrator.errors import CandidateRejected, NotEnoughMemory, PolicyViolation, RepositoryCorrupt
from orchestrator.sample import Variant
from orchestrator.store.meminfo import mem_available
from orchestrator.triton.protocol import TritonState
from orchestrator.triton.twin import TritonTwin

from .conftest import CANDIDATE, MODEL, Env


def declaring(env: Env, memory_mb: object, variant: Variant = Variant.BETTER) -> Path:
    """A signed package of ``variant`` whose meta.yaml declares ``memory_mb``."""
    folder = env.tmp / f"pkg-{variant.value}-{memory_mb}"
    shutil.copytree(env.packages[variant], folder)
    meta = folder / "meta.yaml"
    meta.write_text(meta.read_text() + f"memory_mb: {memory_mb}\n")
    return env.build_key.sign(folder)


@dataclass
class SimulatedDevice:
    """A Jetson-like unified pool: ``total`` MiB, each READY instance of a model or candidate takes ``each``."""

    twin: TritonTwin
    total: int
    each: int
    frees_on_unload: bool = True
    peak_instances: int = 0

    def __call__(self) -> int:
        loaded = sum(1 for model in (MODEL, CANDIDATE) for e in self.twin.states(model).values()
                     if e.state is TritonState.READY)
        if not self.frees_on_unload:
            loaded = max(loaded, self.peak_instances)
        self.peak_instances = max(self.peak_instances, loaded)
        return (self.total - loaded * self.each) * MIB


def test_a_candidate_declared_larger_than_the_device_has_is_refused_before_it_loads(env: Env) -> None:
    available = mem_available()
    assert available is not None, "this test reads /proc/meminfo"
    declared = available // MIB * 4  # four times what this machine has left
    env.orchestrator().import_package(declaring(env, declared))
    with pytest.raises(NotEnoughMemory) as refused:
        env.orchestrator().promote(MODEL, 2)
    message = str(refused.value)
    assert refused.value.exit_code == 4
    assert f"needs {declared:,} MiB (memory_mb {declared} in its meta.yaml)" in message
    assert "MiB available" in message and "headroom" in message
    assert (CANDIDATE, 2) not in env.backends.loads and env.states(CANDIDATE) == {}
    assert env.served_by_twin() == 1 and env.store().resident() == (1,)
    last = env.last("promote")
    assert (last.result, last.to_version) == ("failed", 2) and "does not fit" in last.reason
    assert env.status(2) == "unverified"  # never judged: a smaller device state may let it in later


def test_short_of_memory_the_fallback_is_unloaded_first_when_the_policy_allows(env: Env) -> None:
    env.promote_better()  # v2 serves, v1 resident
    env.set_policy("promotion", free_fallback_for_memory=True, memory_headroom_mb=50)
    env.orchestrator().import_package(declaring(env, 100))
    device = SimulatedDevice(env.twin, total=300, each=100)  # two loaded: 100 MiB left, 150 needed
    orch = env.orchestrator()
    orch.mem_available = device
    steps: list[str] = []
    orch.progress = steps.append
    result = orch.promote(MODEL, 3)
    assert result.to_version == 3 and env.served_by_twin() == 3
    assert "unloading fallback v1 to make room" in steps
    assert env.store().resident() == (2, 3)  # v1 not loaded again by the switch
    assert device.peak_instances == 2  # never three engines at once
    step = next(r for r in env.records() if r.details.get("step") == "fallback_unloaded")
    assert step.details["versions"] == [1] and "unloading fallback v1 first" in step.reason
    assert env.store().attestation(3).footprint_bytes == 100 * MIB  # measured at the candidate's load
    env.assert_consistent(3, [1, 2, 3])


def test_short_of_memory_without_the_policy_the_promote_is_refused_and_says_how(env: Env) -> None:
    env.promote_better()
    env.set_policy("promotion", memory_headroom_mb=50)
    env.orchestrator().import_package(declaring(env, 100))
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=300, each=100)
    with pytest.raises(NotEnoughMemory, match=r"set promotion\.free_fallback_for_memory"):
        orch.promote(MODEL, 3)
    assert env.store().resident() == (1, 2) and env.ready() == {1, 2} and env.served_by_twin() == 2
    assert (CANDIDATE, 3) not in env.backends.loads


def test_a_fallback_unloaded_in_vain_is_loaded_again(env: Env) -> None:
    env.promote_better()
    env.set_policy("promotion", free_fallback_for_memory=True, memory_headroom_mb=50)
    env.orchestrator().import_package(declaring(env, 100))
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=300, each=100, frees_on_unload=False)
    with pytest.raises(NotEnoughMemory, match=r"even with fallback v1 unloaded: .*; v1 loaded again"):
        orch.promote(MODEL, 3)
    assert env.store().resident() == (1, 2) and env.ready() == {1, 2} and env.served_by_twin() == 2
    assert (CANDIDATE, 3) not in env.backends.loads
    assert env.last("promote").result == "failed"


def test_the_served_versions_measured_footprint_is_what_the_next_candidate_needs(env: Env) -> None:
    env.import_()
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=1000, each=300)
    orch.promote(MODEL, 2)
    assert env.store().attestation(2).footprint_bytes == 300 * MIB
    env.import_(Variant.BETTER)
    env.set_policy("promotion", memory_headroom_mb=200)
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=1000, each=300)  # v1 and v2 loaded: 400 left
    with pytest.raises(NotEnoughMemory, match=r"needs 300 MiB \(v2's measured footprint\) \+ 200 MiB headroom, "
                                              r"the device has 400 MiB available"):
        orch.promote(MODEL, 3)


def test_a_declared_memory_figure_that_is_not_a_number_names_the_file(env: Env) -> None:
    env.orchestrator().import_package(declaring(env, '"lots"'))
    with pytest.raises(RepositoryCorrupt, match=r"classifier/2/meta.yaml: memory_mb must be a positive number"):
        env.orchestrator().promote(MODEL, 2)
    assert env.served_by_twin() == 1


def test_a_version_whose_load_failed_is_loaded_again_only_with_retry(env: Env) -> None:
    env.import_()
    env.twin.configure(CANDIDATE, 2, load_error="Internal: failed to deserialize the engine")
    with pytest.raises(CandidateRejected, match="load failed"):
        env.orchestrator().promote(MODEL, 2)
    assert env.store().attestation(2).load_failures == 1
    started = len(env.outcomes("promote"))
    with pytest.raises(PolicyViolation, match=r"failed to load .*promote it again with --retry"):
        env.orchestrator().promote(MODEL, 2)
    assert len(env.outcomes("promote")) == started  # refused before anything was journaled or loaded
    with pytest.raises(CandidateRejected, match="load failed"):
        env.orchestrator().promote(MODEL, 2, retry=True)
    assert env.store().attestation(2).load_failures == 2
    env.twin.configure(CANDIDATE, 2, load_error=None)
    result = env.orchestrator().promote(MODEL, 2, retry=True)
    assert result.to_version == 2 and env.served_by_twin() == 2
    assert env.store().attestation(2).load_failures == 0
    assert env.status(2) == "verified"


def test_promote_reports_each_step_as_it_starts(env: Env) -> None:
    env.import_()
    orch = env.orchestrator()
    steps: list[str] = []
    orch.progress = steps.append
    orch.promote(MODEL, 2)
    assert steps[0] == "checking memory" and steps[1] == f"loading v2 as {CANDIDATE}"
    assert steps[2].startswith("warming up (") and steps[3].startswith("golden set on v2 (")
    assert steps[4:] == ["golden set on served v1", "switching classifier to v2"]


def test_a_promote_killed_after_unloading_the_fallback_is_repaired_with_the_served_version_kept(env: Env) -> None:
    env.promote_better()
    env.set_policy("promotion", free_fallback_for_memory=True, memory_headroom_mb=50)
    env.orchestrator().import_package(declaring(env, 100))
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=300, each=100)
    with env.crash_at("promote:fallback_unloaded"):
        orch.promote(MODEL, 3)
    assert env.served_by_twin() == 2 and env.store().resident() == (2,)
    env.orchestrator().reconcile()
    env.assert_consistent(2, [1, 2, 3])
    finals = [r.result.value for r in env.records() if r.action == "promote" and r.to_version == 3
              and r.result.is_final]
    assert finals == ["aborted"]
    assert env.status(3) == "unverified"


def test_a_fallback_unloaded_for_a_candidate_that_is_refused_is_loaded_again(env: Env) -> None:
    env.promote_better()
    env.set_policy("promotion", free_fallback_for_memory=True, memory_headroom_mb=50)
    env.orchestrator().import_package(declaring(env, 100, Variant.WORSE))
    orch = env.orchestrator()
    orch.mem_available = SimulatedDevice(env.twin, total=300, each=100)
    with pytest.raises(CandidateRejected, match="worse than the served version"):
        orch.promote(MODEL, 3)
    assert env.store().resident() == (1, 2) and env.ready() == {1, 2} and env.served_by_twin() == 2
    reloaded = env.last("reconcile")
    assert reloaded.result.value == "succeeded" and "fallback v1 loaded again" in reloaded.reason
