"""Replay of recorded production inputs against a real Triton.

The classifier records what the drift sampler traces (the tracing lease: never more than its
cap); promote then replays those real inputs to the candidate and the served version. A version
that fails only on bright camera images, which the golden set lacks, passes every golden check
and is refused by the replay gate. The detector, behind its ensemble, records in the ensemble's
pre-processing step instead (no tracing): ``orchestrate replay enable`` reloads that step under
traffic, and no request through the ensemble fails.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.daemons.sampler import MIN_TRACE_RATE
from orchestrator.errors import CandidateRejected
from orchestrator.sample import Variant, detector, sample_images, write_faulty_package
from orchestrator.sample.detector import DetectorVariant
from orchestrator.store.replay import ring_folder
from orchestrator.store.replay_ring import LOCK_FILE, ring_files
from orchestrator.triton.client import Triton

from .conftest import MODEL, Stack, Traffic
from .detectorkit import start_detector_stack
from .watchkit import TEST_WATCH, wait_for, watching

pytestmark = pytest.mark.triton

BOUND_MB = 0.25  # ~75 records of one 3x16x16 image: the ring turns over during the test
REPLAY = {"enabled": True, "max_mb": BOUND_MB, "every_n": 2, "min_samples": 30, "limit": 60}
DRIFT = {"window": 20, "baseline_windows": 5, "samples_per_s": 20}


def set_policy(stack: Stack, section: str, values: dict[str, object], model: str = MODEL) -> None:
    path = stack.state / model / "policy.yaml"
    policy = yaml.safe_load(path.read_text()) or {}
    policy[section] = values
    path.write_text(yaml.safe_dump(policy))


def _bright(seed: int) -> np.ndarray:
    """Camera images brighter than any golden one: the inputs the faulty version gets wrong."""
    return (sample_images(200, seed)[0] + np.float32(0.5)).astype(np.float32)


@contextmanager
def bound_watch(folder: Path) -> Iterator[list[int]]:
    """The ring folder's bytes (records and any file being written), sampled every few ms while the block runs."""
    seen: list[int] = []
    stop = threading.Event()

    def look() -> None:
        while not stop.is_set():
            total = 0
            try:
                for path in folder.iterdir():
                    if path.name != LOCK_FILE:
                        total += path.stat().st_size
            except FileNotFoundError:
                pass  # not there yet, or a file went while we looked
            seen.append(total)
            time.sleep(0.002)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def test_replay_compares_real_recorded_inputs_and_its_buffer_never_exceeds_its_bound(
        stack: Stack, tmp_path: Path, build_key, packages) -> None:  # type: ignore[no-untyped-def]
    set_policy(stack, "replay", REPLAY)
    ring = ring_folder(stack.state / MODEL)
    bound = int(BOUND_MB * 2**20)
    orch = stack.orchestrator()
    assert stack.cli("import", str(packages[Variant.BETTER])).returncode == 0
    # Nothing recorded yet: the gate says so and the promote goes on.
    first = orch.promote(MODEL, 2)
    assert first.changed and first.metrics["replay_samples"] == 0.0
    good = build_key.sign(write_faulty_package(tmp_path / "good", "drift", after_requests=10**9))
    bad = build_key.sign(write_faulty_package(tmp_path / "bad", "drift", after_requests=0))
    assert stack.cli("import", str(good)).returncode == 0 and stack.cli("import", str(bad)).returncode == 0

    watch = {**TEST_WATCH, "rules": {**TEST_WATCH["rules"], "drift": DRIFT}}
    with bound_watch(ring) as sizes:
        with watching(stack, watch) as daemon, Traffic(stack.server.url, threads=2, images=_bright(31)) as traffic:
            assert wait_for(lambda: len(ring_files(ring)) >= 60, 90), "the drift sampler recorded too little"
            time.sleep(3)  # and more: the oldest records go
            drift = daemon.watchers[MODEL].drift
            assert drift is not None and drift.sampler.ring is not None
            sampler, writer = drift.sampler, drift.sampler.ring
            # Replay rides on drift's lease: Triton traces no more often for it, and every_n thins it further.
            assert sampler.armed_rate is not None and sampler.armed_rate >= MIN_TRACE_RATE
            assert writer.kept <= writer.offered // REPLAY["every_n"] + 1 and writer.errors == 0
        assert traffic.failures() == []
        records = ring_files(ring)
        assert REPLAY["min_samples"] <= len(records) and sum(f.size for f in records) <= bound

        # v3: the same network as v2 (its fault never triggers): it agrees on the recorded inputs.
        passed = orch.promote(MODEL, 3)
        assert passed.changed and passed.metrics["replay_samples"] >= REPLAY["min_samples"]
        assert passed.metrics["replay_top1_agreement"] >= 0.95
        succeeded = [r for r in stack.store().journal.read().records if r.action == "promote"][-1]
        assert succeeded.result == "succeeded" and succeeded.to_version == 3
        assert succeeded.details["metrics"]["replay_top1_agreement"] == passed.metrics["replay_top1_agreement"]

        # v4 calls every bright image class 0: its golden checks pass, the recorded inputs do not.
        with pytest.raises(CandidateRejected, match=r"replay of \d+ recorded production inputs: top-1 agreement"):
            orch.promote(MODEL, 4)
    failed = [r for r in stack.store().journal.read().records if r.action == "promote"][-1]
    assert failed.result == "failed" and failed.to_version == 4
    assert failed.details["metrics"]["accuracy"] >= passed.metrics["accuracy"]  # golden alone would have passed it
    assert failed.details["metrics"]["replay_top1_agreement"] < 0.5
    assert stack.store().served() == 3 and stack.served_by_triton() == 3
    assert sizes and max(sizes) <= bound, f"the ring reached {max(sizes)} bytes, bound {bound}"


def _detector_traffic(url: str, frames: np.ndarray, stop: threading.Event, answers: list[tuple[float, str]],
                      period_s: float = 0.02) -> None:
    """One camera calling the ensemble with new frames (not golden ones), recording every answer."""
    client = Triton(url, timeout_s=10.0)
    turn = 0
    try:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.infer(detector.ENSEMBLE, {"IMAGE": frames[turn % len(frames)][None]}, list(detector.OUTPUTS))
                error = ""
            except Exception as exc:  # every failure is data for the assertion
                error = str(exc)
            answers.append((sent, error))
            turn += 1
            time.sleep(max(0.0, sent + period_s - time.monotonic()))
    finally:
        client.close()


@contextmanager
def cameras(url: str, frames: np.ndarray, count: int = 2) -> Iterator[list[tuple[float, str]]]:
    answers: list[tuple[float, str]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_detector_traffic, args=(url, frames[i::count], stop, answers), daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def _golden_requests(stack: Stack) -> int:
    """Requests a candidate serves before the replay: the warm-up and the golden set, in batches."""
    policy = yaml.safe_load((stack.state / detector.MODEL / "policy.yaml").read_text())["promotion"]
    batch = min(int(policy["batch_size"]), 8)  # the detector's max_batch_size
    batches = -(-len(detector.golden_frames()) // batch)
    return min(int(policy["warmup_requests"]), batches) + batches


def test_an_ensemble_records_in_its_first_step_without_tracing_and_enabling_it_drops_no_request(
        tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    stack = start_detector_stack(tmp_path, build_key.public)
    try:
        _ensemble_replay(stack, tmp_path, build_key)
    except BaseException:
        print(f"--- tritonserver log tail ---\n{stack.server.log_tail()}")
        raise
    finally:
        stack.server.kill()


def _ensemble_replay(stack: Stack, tmp_path: Path, build_key) -> None:  # type: ignore[no-untyped-def]
    detector.write_steps(stack.repository)  # the steps as the generator writes them: replay_ring.py shipped
    step_config = stack.repository / detector.PRE / "config.pbtxt"
    original = step_config.read_text()
    model = detector.MODEL
    set_policy(stack, "replay", {"min_samples": 20, "limit": 60}, model)  # enabled: false; the step records
    better = build_key.sign(detector.write_detector_package(tmp_path / "better", DetectorVariant.BETTER))
    assert stack.cli("import", str(better)).returncode == 0
    first = stack.orchestrator().promote(model, 2)  # nothing records yet: no replay
    assert first.changed and not [k for k in first.metrics if k.startswith("replay_")]
    ring, bound = ring_folder(stack.state / model), int(0.5 * 2**20)
    frames = detector.sample_frames(120, seed=41)[0]
    with bound_watch(ring) as sizes:
        with cameras(stack.server.url, frames) as answers:
            time.sleep(1.0)
            started = time.monotonic()
            enabled = stack.cli("replay", "enable", model, "--every", "2", "--max-mb", "0.5")
            reloaded = time.monotonic()
            assert enabled.returncode == 0, enabled.stderr
            assert enabled.stdout.startswith("detector: recording (step detector_pre, 1 request in 2, bound 0.5 MiB)")
            assert wait_for(lambda: len(ring_files(ring)) >= 30, 60), "the step recorded too little"
            time.sleep(2)  # and more: the oldest records go
        during = [error for sent, error in answers if started - 0.5 <= sent <= reloaded + 0.5]
        print(f"replay enable: step reloaded in {reloaded - started:.2f} s, {len(during)} requests through the "
              f"ensemble meanwhile, {sum(1 for e in during if e)} failed; {len(answers)} requests in all")
        assert [error for _, error in answers if error] == []
        assert len(during) > 10

        status = json.loads(stack.cli("replay", "status", model, "--json").stdout)
        assert (status["recording"], status["source"], status["max_bytes"]) == (True, "step detector_pre", bound)
        assert 0 < status["bytes"] <= bound

        good = build_key.sign(detector.write_faulty_detector_package(tmp_path / "good", "confused", 10**9))
        late = build_key.sign(detector.write_faulty_detector_package(tmp_path / "late", "confused",
                                                                     _golden_requests(stack)))
        assert stack.cli("import", str(good)).returncode == 0 and stack.cli("import", str(late)).returncode == 0
        # v3 answers like v2: the same boxes on every recorded frame.
        passed = stack.orchestrator().promote(model, 3)
        assert passed.changed and passed.metrics["replay_samples"] >= 20
        assert (passed.metrics["replay_box_agreement"], passed.metrics["replay_count_diff"]) == (1.0, 0.0)
        # v4 swaps classes after the golden set: every golden check passes it, the recorded frames do not.
        with pytest.raises(CandidateRejected, match=r"box agreement with the served version 0\.\d+ is below"):
            stack.orchestrator().promote(model, 4)
    assert stack.orchestrator().store(model).served() == 3
    assert max(sizes) <= bound, f"the ring reached {max(sizes)} bytes, bound {bound}"
    assert stack.cli("replay", "disable", model).returncode == 0
    assert step_config.read_text() == original
    history = [r for r in stack.orchestrator().store(model).journal.read().records if r.action == "replay"]
    assert [r.result for r in history] == ["started", "succeeded", "started", "succeeded"]
