"""``orchestrate replay``: setting up recording in an ensemble's first step, and every way it is refused.

A small routed repository (``pipeline`` = ``classifier_pre`` -> ``classifier``) on disk; Triton is a fake
that records loads (the real reload, and that it drops no request, is in tests/integration/test_replay.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.errors import LoadFailed, TritonUnreachable, UsageError
from orchestrator.sample import golden_set
from orchestrator.settings import Settings
from orchestrator.store import replay as replay_store
from orchestrator.store.replay_ring import RingWriter
from orchestrator.triton.protocol import InferenceResult
from orchestrator.usecases import replay as replay_usecase
from orchestrator.usecases.orchestrator import Orchestrator
from orchestrator.usecases.replay import (
    clear_replay,
    disable_replay,
    enable_replay,
    gate_on,
    replay_status,
    replay_verdict,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL, STEP, ENSEMBLE = "classifier", "classifier_pre", "pipeline"
STEP_CONFIG = """# Pre-processing step of the pipeline ensemble (python backend).
name: "classifier_pre"
backend: "python"
max_batch_size: 8
input [ { name: "FRAME", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
output [ { name: "PRE", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
parameters { key: "keep_me" value { string_value: "1" } }
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
ENSEMBLE_CONFIG = """name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IMAGE_IN", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
output [ { name: "SCORES", data_type: TYPE_FP32, dims: [ 10 ] } ]
ensemble_scheduling { step [
  { model_name: "classifier_pre" model_version: -1 input_map { key: "FRAME" value: "IMAGE_IN" }
    output_map { key: "PRE" value: "pre" } },
  { model_name: "classifier" model_version: -1 input_map { key: "IMAGE" value: "pre" }
    output_map { key: "LOGITS" value: "SCORES" } }
] }
"""


@dataclass
class FakeTriton:
    """What the verbs ask of Triton: liveness and loads; ``answers`` for the gate's inferences."""

    url: str = "http://fake:8000"
    loads: list[str] = field(default_factory=list)
    load_error: str | None = None
    live: bool = True
    asked: list[tuple[str, tuple[str, ...], int | None]] = field(default_factory=list)

    def require_live(self) -> None:
        if not self.live:
            raise TritonUnreachable(self.url, "connection refused")

    def load(self, model: str, config_json: str | None = None) -> None:
        if self.load_error:
            raise LoadFailed(model, self.load_error)
        self.loads.append(model)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: int | None = None, request_id: str = "") -> InferenceResult:
        self.asked.append((model, tuple(sorted(inputs)), version))
        logits = np.zeros((len(inputs["IMAGE_IN"]), 10), np.float32)
        logits[:, 4] = 1.0
        return InferenceResult(model, version or 1, {"SCORES": logits})


@dataclass
class Routed:
    tmp: Path
    repository: Path
    state: Path
    triton: FakeTriton

    def orchestrator(self) -> Orchestrator:
        settings = Settings(repository=self.repository, state_dir=self.state, triton_url=self.triton.url,
                            actor="pytest", lock_timeout_s=0.5)
        return Orchestrator(settings, triton=self.triton)  # type: ignore[arg-type]

    @property
    def step_config(self) -> Path:
        return self.repository / STEP / "config.pbtxt"

    def replay_records(self) -> list:  # type: ignore[type-arg]
        return [r for r in self.orchestrator().store(MODEL).journal.read().records if r.action == "replay"]

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["-r", str(self.repository), "--state-dir", str(self.state),
                                          "--url", "http://127.0.0.1:9", "--timeout", "1", "replay", *args])
        return result.exit_code, result.output


def _sample_copy(tmp: Path) -> tuple[Path, Path]:
    repository, state = tmp / "model_repository", tmp / "orchestrator_state"
    shutil.copytree(ROOT / "model_repository", repository)
    shutil.copytree(ROOT / "orchestrator_state", state)
    return repository, state


@pytest.fixture
def routed(tmp_path: Path) -> Routed:
    repository, state = _sample_copy(tmp_path)
    (repository / STEP / "1").mkdir(parents=True)
    (repository / STEP / "config.pbtxt").write_text(STEP_CONFIG)
    (repository / STEP / "1" / "model.py").write_text("# the step's runner\n")
    shutil.copy(ROOT / "orchestrator" / "store" / "replay_ring.py", repository / STEP / "1" / "replay_ring.py")
    (repository / ENSEMBLE / "1").mkdir(parents=True)
    (repository / ENSEMBLE / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    return Routed(tmp_path, repository, state, FakeTriton())


@pytest.fixture
def direct(tmp_path: Path) -> Routed:
    repository, state = _sample_copy(tmp_path)
    return Routed(tmp_path, repository, state, FakeTriton())


def _set_policy(state: Path, section: str, values: dict[str, object]) -> None:
    path = state / MODEL / "policy.yaml"
    policy = yaml.safe_load(path.read_text()) or {}
    policy[section] = values
    path.write_text(yaml.safe_dump(policy))


# --- a model behind an ensemble -------------------------------------------------------------

def test_enable_writes_the_first_steps_parameters_journals_and_reloads_it(routed: Routed) -> None:
    status = enable_replay(routed.orchestrator(), MODEL, max_mb=2, every_n=5)
    assert routed.triton.loads == [STEP]
    assert (status.recording, status.source, status.max_bytes, status.every_n) == (True, f"step {STEP}", 2 * 2**20, 5)
    text = routed.step_config.read_text()
    assert text.startswith(STEP_CONFIG)  # the rest of the file, its comment included, as it was
    assert 'parameters { key: "replay_dir" value { string_value: "orchestrator_state/classifier/replay" } }' in text
    assert 'key: "replay_max_bytes" value { string_value: "2097152" }' in text
    assert 'key: "replay_every_n" value { string_value: "5" }' in text
    assert (routed.state / MODEL / "replay").is_dir()
    # The golden set's rows, under the step's input name: the probes and golden runs through it are not recorded.
    ring = RingWriter(routed.state / MODEL / "replay", 10**6, every_n=1)
    golden = golden_set()[0]
    assert not ring.offer({"FRAME": golden[:4]}) and ring.skipped == 1
    assert ring.offer({"FRAME": golden[:1] + np.float32(0.5)})
    ring.close()
    records = routed.replay_records()
    assert [r.result for r in records] == ["started", "succeeded"] and len({r.op for r in records}) == 1
    assert records[-1].details == {"step": STEP, "recording": True, "max_bytes": 2 * 2**20, "every_n": 5,
                                   "replay_dir": "orchestrator_state/classifier/replay"}
    # Enabled again as it is: nothing written, nothing reloaded.
    enable_replay(routed.orchestrator(), MODEL, max_mb=2, every_n=5)
    assert routed.triton.loads == [STEP] and len(routed.replay_records()) == 2


def test_enable_takes_the_policys_bound_and_rate_by_default(routed: Routed) -> None:
    _set_policy(routed.state, "replay", {"max_mb": 1, "every_n": 7})
    status = enable_replay(routed.orchestrator(), MODEL)
    assert (status.max_bytes, status.every_n) == (2**20, 7)


def test_disable_puts_the_steps_config_back_as_it_was(routed: Routed) -> None:
    enable_replay(routed.orchestrator(), MODEL)
    status = disable_replay(routed.orchestrator(), MODEL)
    assert routed.step_config.read_text() == STEP_CONFIG
    assert not status.recording and routed.triton.loads == [STEP, STEP]
    assert [r.result for r in routed.replay_records()] == ["started", "succeeded", "started", "succeeded"]
    disable_replay(routed.orchestrator(), MODEL)  # already off: nothing to do
    assert routed.triton.loads == [STEP, STEP]


def test_a_failed_reload_restores_the_steps_config_and_is_journaled(routed: Routed) -> None:
    routed.triton.load_error = "failed to load 'classifier_pre': ModuleNotFoundError: replay_ring"
    with pytest.raises(LoadFailed):
        enable_replay(routed.orchestrator(), MODEL)
    assert routed.step_config.read_text() == STEP_CONFIG
    failed = routed.replay_records()[-1]
    assert failed.result == "failed" and "ModuleNotFoundError" in failed.reason


def test_a_config_write_the_disk_refuses_is_journaled_and_leaves_the_step_alone(
        routed: Routed, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, data: bytes | str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replay_store, "write_atomic", refuse)
    monkeypatch.setattr(replay_usecase, "write_atomic", refuse)
    with pytest.raises(OSError, match="No space left"):
        enable_replay(routed.orchestrator(), MODEL)
    assert routed.step_config.read_text() == STEP_CONFIG and routed.triton.loads == []
    assert routed.replay_records()[-1].result == "failed"


def test_parameters_written_by_hand_are_replaced_not_doubled(routed: Routed) -> None:
    routed.step_config.write_text(STEP_CONFIG + 'parameters { key: "replay_every_n" value { string_value: "3" } }\n')
    enable_replay(routed.orchestrator(), MODEL, every_n=9)
    config = replay_store.read_step(routed.repository / STEP)[1]
    assert config.parameters["replay_every_n"].string_value == "9" and config.parameters["keep_me"].string_value == "1"
    disable_replay(routed.orchestrator(), MODEL)
    config = replay_store.read_step(routed.repository / STEP)[1]
    assert set(config.parameters) == {"keep_me"}


def test_the_gate_replays_what_the_step_recorded_under_the_ensembles_names(routed: Routed) -> None:
    orch = routed.orchestrator()
    enable_replay(orch, MODEL, every_n=1)
    ring = RingWriter(routed.state / MODEL / "replay", 10**6, every_n=1)
    for image in golden_set()[0][:3] + np.float32(0.5):
        ring.offer({"FRAME": image[None]})  # the step's own input name
    ring.close()
    store = orch.store(MODEL)
    snap = store.snapshot()
    policy = snap.policies.replay  # enabled: false; the step records, so the gate runs
    assert gate_on(store, snap, policy)
    verdict = replay_verdict(orch, store, snap, "pipeline__candidate", ENSEMBLE, None, policy, ["SCORES"])
    assert verdict is not None and verdict.metrics["replay_samples"] == 3.0 and not verdict.outcome.is_final
    assert routed.triton.asked[:2] == [(ENSEMBLE, ("IMAGE_IN",), None), ("pipeline__candidate", ("IMAGE_IN",), None)]
    disable_replay(orch, MODEL)
    snap = store.snapshot()
    assert not gate_on(store, snap, snap.policies.replay)
    assert replay_verdict(orch, store, snap, "pipeline__candidate", ENSEMBLE, None, snap.policies.replay,
                          ["SCORES"]) is None


def test_status_and_clear(routed: Routed) -> None:
    orch = routed.orchestrator()
    assert replay_status(orch, MODEL).note == (f"`orchestrate replay enable {MODEL}` records in the {ENSEMBLE} "
                                               f"ensemble's step {STEP}")
    enable_replay(orch, MODEL)
    ring = RingWriter(routed.state / MODEL / "replay", 10**6, every_n=1)
    for i in range(4):
        ring.offer({"FRAME": np.full((1, 3, 16, 16), i, np.float32)})
    status = replay_status(orch, MODEL)
    assert (status.ring.records, status.ring.bytes) == (4, ring.total) and status.ring.oldest is not None
    after, records, freed = clear_replay(orch, MODEL)
    assert (records, freed, after.ring.records) == (4, ring.total, 0)
    assert routed.replay_records()[-1].details == {"cleared": 4, "bytes": ring.total}
    assert ring.offer({"FRAME": np.full((1, 3, 16, 16), 9, np.float32)})  # the step keeps recording after a clear
    ring.close()


def test_a_step_that_ships_no_ring_module_cannot_record(routed: Routed) -> None:
    (routed.repository / STEP / "1" / "replay_ring.py").unlink()
    with pytest.raises(UsageError, match=r"step classifier_pre cannot record: none of its version folders ships "
                                         r"replay_ring\.py"):
        enable_replay(routed.orchestrator(), MODEL)
    assert routed.step_config.read_text() == STEP_CONFIG and routed.replay_records() == []


def test_an_ensemble_whose_first_step_is_the_model_itself_cannot_record_in_a_step(routed: Routed) -> None:
    (routed.repository / ENSEMBLE / "config.pbtxt").write_text(
        ENSEMBLE_CONFIG.replace('"IMAGE_IN"', '"IMAGE_IN_X"').replace(
            '{ model_name: "classifier_pre" model_version: -1 input_map { key: "FRAME" value: "IMAGE_IN_X" }\n'
            '    output_map { key: "PRE" value: "pre" } },\n', "").replace('value: "pre"', 'value: "IMAGE_IN_X"'))
    with pytest.raises(UsageError, match="classifier is the first step of the pipeline ensemble"):
        enable_replay(routed.orchestrator(), MODEL)


@pytest.mark.parametrize(("options", "message"), [({"max_mb": 0}, "--max-mb must be > 0"),
                                                  ({"every_n": 0}, "--every must be >= 1")])
def test_bad_options_are_refused_before_anything_is_written(routed: Routed, options: dict[str, float],
                                                            message: str) -> None:
    with pytest.raises(UsageError, match=message):
        enable_replay(routed.orchestrator(), MODEL, **options)  # type: ignore[arg-type]
    assert routed.step_config.read_text() == STEP_CONFIG


# --- the CLI: one line and an exit code for each refusal -------------------------------------

def test_cli_enable_with_triton_unreachable_exits_9_and_writes_nothing(routed: Routed) -> None:
    code, out = routed.cli("enable", MODEL)
    assert code == 9 and out.startswith("error: Triton at http://127.0.0.1:9 is unreachable") and out.count("\n") == 1
    assert routed.step_config.read_text() == STEP_CONFIG


def test_cli_a_corrupt_steps_parameter_exits_6(routed: Routed) -> None:
    routed.step_config.write_text(STEP_CONFIG + 'parameters { key: "replay_dir" value { string_value: "r" } }\n'
                                  'parameters { key: "replay_max_bytes" value { string_value: "lots" } }\n')
    code, out = routed.cli("status", MODEL)
    assert code == 6 and "replay_max_bytes and replay_every_n must be integers" in out


def test_cli_the_ensemble_itself_is_not_a_model_to_name(routed: Routed) -> None:
    code, out = routed.cli("status", ENSEMBLE)
    assert code == 2 and "'pipeline' is an ensemble: its versions are those of classifier" in out


def test_cli_clear_the_disk_refuses_exits_11(routed: Routed, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = RingWriter(routed.state / MODEL / "replay", 10**6, every_n=1)
    ring.offer({"FRAME": np.zeros((1, 3, 16, 16), np.float32)})
    ring.close()

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", refuse)
    code, out = routed.cli("clear", MODEL)
    assert code == 11 and "Read-only file system" in out


def test_cli_enable_for_a_directly_called_model_says_what_to_set_and_exits_2(direct: Routed) -> None:
    code, out = direct.cli("enable", MODEL)
    assert code == 2
    assert "classifier is called directly: it records what the drift sampler traces; set `replay: {enabled: true}` " \
           "and `watch: {rules: {drift: {samples_per_s: 2}}}` in" in out
    _set_policy(direct.state, "replay", {"enabled": True})
    code, out = direct.cli("enable", MODEL)
    assert code == 2 and "`replay: {enabled: true}`" not in out and "samples_per_s" in out
    _set_policy(direct.state, "watch", {"rules": {"drift": {"samples_per_s": 2}}})
    code, out = direct.cli("enable", MODEL)
    assert code == 0 and out.startswith("classifier: recording (tracing, 1 request in 20, bound 64.0 MiB)")
    code, out = direct.cli("enable", MODEL, "--max-mb", "8")
    assert code == 2 and "set replay.max_mb and replay.every_n in" in out
    code, out = direct.cli("disable", MODEL)
    assert code == 2 and "set `replay: {enabled: false}`" in out


def test_cli_status_of_an_unknown_model_or_a_broken_policy(direct: Routed) -> None:
    code, out = direct.cli("status", "nosuch")
    assert code == 2 and "unknown model 'nosuch'" in out
    _set_policy(direct.state, "replay", {"every_n": 0})
    code, out = direct.cli("status", MODEL)
    assert code == 6 and "replay: every_n must be an integer >= 1" in out


def test_cli_status_json(direct: Routed) -> None:
    import json  # noqa: PLC0415

    code, out = direct.cli("status", MODEL, "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["model"], shown["recording"], shown["records"], shown["source"]) == (MODEL, False, 0, None)


@pytest.mark.parametrize("args", [("replay", "--help"), ("replay", "status", "--help")])
def test_replay_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    from tests.unit.test_cli_startup import HEAVY, _cli_modules, _heavy  # noqa: PLC0415 - the startup checks' tools

    code, out, modules = _cli_modules(*args)
    assert code == 0 and "replay" in out
    assert _heavy(modules, HEAVY) == []
    assert not [m for m in modules if m.startswith("orchestrator.usecases")]
