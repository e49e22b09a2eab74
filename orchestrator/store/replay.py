"""Where a model's recorded production inputs live, and the ensemble step settings that record them.

    <state>/<model>/replay/<seq>.npz     the ring (``replay_ring.py``): PRODUCTION DATA, bounded
    <repository>/<step>/config.pbtxt     parameters replay_dir, replay_max_bytes, replay_every_n:
                                         the ensemble's first step records what clients send

A model clients call directly records through the drift sampler's traces (``tracing_ring``);
one behind an ensemble records in the ensemble's first step, a python-backend step that ships
``replay_ring.py`` in its version folder and reads these parameters (empty ``replay_dir``: off).
A relative ``replay_dir`` is resolved against the repository folder's parent, so that the same
config works where Triton sees the folders under another mount point, as long as the state
folder sits beside the repository (the default layout); otherwise the path is absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from orchestrator.core.replay_gate import is_golden
from orchestrator.errors import RepositoryCorrupt
from orchestrator.store.atomic import write_atomic
from orchestrator.store.golden import load_golden
from orchestrator.store.modelconfig import CONFIG_FILE, ConfigError, ModelConfig, parse_config, read_config
from orchestrator.store.replay_ring import PARTIAL, RingWriter, ring_files, write_skip_list
from orchestrator.store.repository import ModelStore
from orchestrator.store.snapshot import ModelSnapshot

REPLAY_DIR = "replay"
PARAMETERS = ("replay_dir", "replay_max_bytes", "replay_every_n")
_BEGIN = "# replay: written by `orchestrate replay enable` (records production inputs; `replay disable` removes it)"
_END = "# end replay"
_BLOCK = re.compile(rf"\n?{re.escape(_BEGIN)}\n.*?{re.escape(_END)}\n?", re.DOTALL)


def ring_folder(state: Path) -> Path:
    return state / REPLAY_DIR


@dataclass(frozen=True)
class RingStatus:
    records: int
    bytes: int
    oldest: float | None  # wall-clock time the oldest record was written
    newest: float | None


def ring_status(folder: Path) -> RingStatus:
    files = ring_files(folder)
    return RingStatus(len(files), sum(f.size for f in files), min((f.mtime for f in files), default=None),
                      max((f.mtime for f in files), default=None))


def clear_ring(folder: Path) -> tuple[int, int]:
    """Delete every record (and interrupted writes); (records, bytes) removed. The writer's lock file and the
    skip list stay: a step recording now keeps its lock, and a second writer must not get one beside it."""
    removed = freed = 0
    for ring_file in ring_files(folder):
        ring_file.path.unlink(missing_ok=True)
        removed, freed = removed + 1, freed + ring_file.size
    for leftover in folder.iterdir() if folder.is_dir() else []:
        if PARTIAL.match(leftover.name):
            leftover.unlink(missing_ok=True)
    return removed, freed


def tracing_ring(store: ModelStore) -> RingWriter | None:
    """The ring the drift sampler records into: the model's policy turns it on, and clients call the model
    itself (behind an ensemble the traced tensors are the step's, not what clients send). Golden inputs (the
    watcher's probes are traced too) are not recorded: compared within the trace's rounding."""
    snap = store.snapshot()
    policy = snap.policies.replay
    if not policy.enabled or snap.route is not None:
        return None
    golden = load_golden(store.state / snap.policies.promotion.golden, snap.client_contract)
    reference = golden.inputs if golden is not None else None
    return RingWriter(ring_folder(store.state), policy.max_bytes, policy.every_n,
                      skip=(lambda inputs: is_golden(inputs, reference)) if reference is not None else None)


def write_golden_skip_list(snap: ModelSnapshot, names: dict[str, str]) -> int | None:
    """The golden set's rows as the ring folder's skip list, under the recording step's input names (``names``:
    client name -> the step's); the rows listed, None without a golden set. A step records exact tensors, so
    the watcher's probes and promote's golden runs through it are recognised by their bytes."""
    golden = load_golden(snap.state / snap.policies.promotion.golden, snap.client_contract)
    if golden is None:
        return None
    return write_skip_list(ring_folder(snap.state), {names.get(k, k): v for k, v in golden.inputs.items()})


# --- an ensemble step's recording settings ------------------------------------------------

@dataclass(frozen=True)
class StepRecording:
    replay_dir: str  # as written in the config (relative: to the repository folder's parent)
    max_bytes: int
    every_n: int

    def folder(self, step_folder: Path) -> Path:
        """Where the step writes: what the step itself resolves (``args["model_repository"]`` is its folder)."""
        path = Path(self.replay_dir)
        return path if path.is_absolute() else step_folder.parent.parent / path


def replay_dir_for(step_folder: Path, ring: Path) -> str:
    """``ring`` as the step's ``replay_dir``: relative to the repository folder's parent when inside it."""
    base = step_folder.parent.parent.resolve()
    try:
        return str(ring.resolve().relative_to(base))
    except ValueError:
        return str(ring.resolve())


def step_recording(config: ModelConfig) -> StepRecording | None:
    """The step's recording settings; None when it does not record. RepositoryCorrupt on unusable values."""
    params = {key: config.parameters[key].string_value for key in PARAMETERS if key in config.parameters}
    replay_dir = params.get("replay_dir", "").strip()
    if not replay_dir:
        return None
    try:
        max_bytes, every_n = int(params.get("replay_max_bytes", "")), int(params.get("replay_every_n", "1"))
    except ValueError:
        raise RepositoryCorrupt(f"step {config.name}: replay_max_bytes and replay_every_n must be integers, got "
                                f"{params.get('replay_max_bytes')!r} and {params.get('replay_every_n')!r}") from None
    if max_bytes < 1 or every_n < 1:
        raise RepositoryCorrupt(f"step {config.name}: replay_max_bytes and replay_every_n must be >= 1")
    return StepRecording(replay_dir, max_bytes, every_n)


def read_step(step_folder: Path) -> tuple[str, ModelConfig]:
    try:
        return read_config(step_folder / CONFIG_FILE)
    except ConfigError as exc:
        raise RepositoryCorrupt(f"{step_folder / CONFIG_FILE}: {exc}") from exc


def with_recording(text: str, recording: StepRecording | None) -> tuple[str, ModelConfig]:
    """``text`` recording as ``recording`` says (None: not at all); the rest of the file, comments included, kept."""
    wanted = parse_config(text)
    for key in PARAMETERS:
        if key in wanted.parameters:
            del wanted.parameters[key]
    rest = _BLOCK.sub("\n", text).rstrip("\n") + "\n"
    if recording is not None:
        values = {"replay_dir": recording.replay_dir, "replay_max_bytes": str(recording.max_bytes),
                  "replay_every_n": str(recording.every_n)}
        for key, value in values.items():
            wanted.parameters[key].string_value = value
        lines = [f"parameters {{ key: {_quoted(key)} value {{ string_value: {_quoted(value)} }} }}"
                 for key, value in values.items()]
        rest += "\n".join([_BEGIN, *lines, _END]) + "\n"
    try:
        if parse_config(rest) == wanted:
            return rest, wanted
    except ConfigError:
        pass
    # Replay parameters written by hand outside our block: the file is rewritten from the parsed config.
    return text_format.MessageToString(wanted), wanted


def write_recording(step_folder: Path, recording: StepRecording | None) -> ModelConfig:
    """The step's config.pbtxt with ``recording``, replaced atomically; what Triton will load."""
    text, _ = read_step(step_folder)
    new_text, config = with_recording(text, recording)
    if new_text != text:
        write_atomic(step_folder / CONFIG_FILE, new_text)
    return config


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
