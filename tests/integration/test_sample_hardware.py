"""A fault that depends on the device's hardware, on a real Triton: ``EmbeddedTriton(env=...)`` reaches the
python backend's stub, and the sample's faulty runner reads ``ORCH_SAMPLE_HARDWARE`` there."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import CandidateRejected
from orchestrator.sample import HARDWARE_ENV, write_faulty_package
from orchestrator.store.metafile import VersionStatus
from orchestrator.triton.embedded import EmbeddedTriton

from .conftest import ADMIN_KEY, MODEL, ROOT, Stack, classifier_only

pytestmark = pytest.mark.triton


def _stack(tmp: Path, trusted_key: Path, hardware: str) -> Stack:
    repository, state = tmp / "model_repository", tmp / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository, ignore=classifier_only)
    shutil.copytree(ROOT / "orchestrator_state", state, ignore=classifier_only)
    (state / "trusted_keys").mkdir()
    shutil.copy(trusted_key, state / "trusted_keys" / trusted_key.name)
    server = EmbeddedTriton(repository, tmp / "triton", load_models=(MODEL,), admin_key=ADMIN_KEY,
                            env={HARDWARE_ENV: hardware})
    return Stack(server.start(), repository, state, tmp)


@pytest.fixture(params=["jetson-nano", "jetson-xavier-nx"])
def device(request: pytest.FixtureRequest, tmp_path: Path, build_key) -> Iterator[tuple[str, Stack]]:  # type: ignore[no-untyped-def]
    stack = _stack(tmp_path, build_key.public, request.param)
    try:
        yield request.param, stack
    except BaseException:
        print(f"--- tritonserver log tail ---\n{stack.server.log_tail()}")
        raise
    finally:
        stack.server.kill()


def test_a_nano_only_fault_is_refused_by_the_promote_gate_on_a_nano_only(device: tuple[str, Stack], tmp_path: Path,
                                                                          build_key) -> None:  # type: ignore[no-untyped-def]
    hardware, stack = device
    package = build_key.sign(write_faulty_package(tmp_path / "nano-nan", "nan", after_requests=0,
                                                  only_on_hardware=("jetson-nano",)))
    orch = stack.orchestrator()
    assert orch.import_package(package).version == 2
    if hardware == "jetson-nano":
        with pytest.raises(CandidateRejected):
            orch.promote(MODEL, 2)
        assert stack.store().status(2) is VersionStatus.FAILED
        assert stack.served_by_triton() == 1
    else:
        assert orch.promote(MODEL, 2).changed
        assert stack.served_by_triton() == 2
