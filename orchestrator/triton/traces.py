"""Reading Triton's per-request trace files (``--trace-config triton,log-frequency=1``).

Measured on Triton 2.51: with ``trace_level`` TIMESTAMPS+TENSORS each sampled request
becomes one file ``<trace_file>.<n>``: a JSON list of entries sharing an ``id``. The
model name and version come in an entry of their own (only with TIMESTAMPS on), each
tensor as ``{"name", "shape": "1,3,16,16", "dtype": "FP32", "data": "0.1,2.3,..."}`` with
about six significant digits, and timestamps as ``{"timestamps": [{"name", "ns"}]}``.
All traced models share the files, so a reader keeps to its own model's.

A traced ensemble's file holds its own entry (the client's inputs, the final outputs) and one
entry per step (``model_name``, ``model_version``, ``parent_id``: the ensemble entry's id), the
steps' first: its first bytes name a step, not the ensemble (``TraceTail(nested=True)``).
UINT8 elements are written as single characters, not numbers (measured on 2.51: a frame's bytes
raw between the commas, NUL and ``"`` included), which makes such a file invalid JSON: every
tensor's data is therefore cut out before the JSON is parsed (``split_data``). The data ends
where ``","shape":`` follows it: neither text numbers nor comma-separated single characters
can hold that sequence.
"""

from __future__ import annotations

import enum
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.errors import PolicyViolation, UsageError
from orchestrator.triton.protocol import OWN_REQUEST

if TYPE_CHECKING:
    from orchestrator.triton.client import Triton

_DTYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
           "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
           "UINT64": np.uint64, "BOOL": np.bool_}
_MODEL_NAME = re.compile(rb'"model_name"\s*:\s*"([^"]*)"')
_DATA = re.compile(rb'"data"\s*:\s*"')
_DATA_END = re.compile(rb'"\s*,\s*"shape"\s*:')
_CHARACTERS = {"UINT8"}  # dtypes whose elements Triton 2.51 writes as characters
HEAD_BYTES = 2048  # the model name comes before any tensor
PARTIAL_GRACE_S = 2.0  # a trace file that does not parse yet may still be being written
FOREIGN_MEMORY = 10_000  # names of other models' trace files remembered, to skip them cheaply


TRACING_OFF: dict[str, object] = {"trace_level": None, "trace_rate": None, "trace_count": None,
                                  "log_frequency": None}  # back to the server-wide settings


def tracing_settings(rate: int, count: int = -1) -> dict[str, object]:
    """Per-model trace settings: 1 request in ``rate``, ``count`` traces at most (-1: no limit), a file each.

    Tensors for the data; timestamps because the model's name and version come with them.
    """
    return {"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": str(rate), "trace_count": str(count),
            "log_frequency": "1"}


def shadow_tracing(sample_rate: float) -> dict[str, object]:
    """Trace settings for the production model under shadow: every 1/rate-th request, one file per request."""
    return tracing_settings(max(1, round(1 / sample_rate)))


def trace_location(triton: Triton, model: str, trace_dir: Path | None, purpose: str) -> tuple[Path, str]:
    """(folder on this machine, file prefix) of the trace files Triton writes for ``model``.

    The file is a start flag of Triton's (the API cannot set it); ``trace_dir`` is where that
    folder is mounted here when it differs.
    """
    trace_file = str(triton.trace_settings(model).get("trace_file") or "")
    if not trace_file:
        raise PolicyViolation(f"Triton was started without a trace file: {purpose} needs "
                              "--trace-config=triton,file=DIR/trace.json and --trace-config=level=OFF")
    folder = trace_dir or Path(trace_file).parent
    if not folder.is_dir():
        raise UsageError(f"Triton writes traces to {Path(trace_file).parent}, which is not a folder here: mount it "
                         f"and pass --trace-dir")
    return folder, Path(trace_file).name


class UnsupportedTrace(ValueError):
    """A trace that cannot be replayed (BYTES tensors, missing inputs): counted, not fatal."""


@dataclass(frozen=True)
class TraceSample:
    model: str
    version: int | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # what production served
    served_ms: float | None  # REQUEST_START..REQUEST_END inside Triton
    steps: dict[str, int] = field(default_factory=dict)  # an ensemble's: each step's model -> the version that ran


def trace_files(folder: Path, prefix: str) -> list[Path]:
    """``prefix.<n>`` files in the order Triton wrote them."""
    found, start = [], prefix + "."
    try:
        with os.scandir(folder) as entries:  # a reader lists the folder many times a second: no glob
            for entry in entries:
                suffix = entry.name[len(start):]
                if entry.name.startswith(start) and suffix.isdigit():
                    found.append((int(suffix), folder / entry.name))
    except FileNotFoundError:
        return []
    return [path for _, path in sorted(found)]


def names_in(text: bytes) -> set[str]:
    """Every model a trace file has an entry of (an ensemble's file: the ensemble and its steps)."""
    return {match.group(1).decode(errors="replace") for match in _MODEL_NAME.finditer(text)}


def model_of(head: bytes) -> str | None:
    """The model a trace file belongs to, from its first bytes (cheap: no tensor is parsed)."""
    match = _MODEL_NAME.search(head)
    return match.group(1).decode(errors="replace") if match else None


def split_data(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The file with every tensor's data cut out (valid JSON even where UINT8 data is not), and the data, in
    file order; ValueError when a data string does not end (a file still being written)."""
    parts, data, at = [], [], 0
    while (opened := _DATA.search(raw, at)) is not None:
        closed = _DATA_END.search(raw, opened.end())
        if closed is None:
            raise ValueError("a tensor's data does not end: the file is incomplete")
        parts.append(raw[at:opened.end()])
        data.append(raw[opened.end():closed.start()])
        at = closed.start()
    parts.append(raw[at:])
    return b"".join(parts), data


def _tensor(raw: dict[str, object], data: bytes) -> np.ndarray:
    dtype = _DTYPES.get(str(raw.get("dtype")))
    if dtype is None:
        raise UnsupportedTrace(f"tensor {raw.get('name')} has dtype {raw.get('dtype')}")
    shape = tuple(int(d) for d in str(raw.get("shape", "")).split(",") if d.strip())
    count = int(np.prod(shape, dtype=np.int64))
    if raw.get("dtype") in _CHARACTERS:
        if len(data) != max(2 * count - 1, 0) or data[1::2].count(b",") != max(count - 1, 0):
            raise UnsupportedTrace(f"tensor {raw.get('name')}: {len(data)} bytes are not {count} characters")
        return np.frombuffer(data[0::2], dtype=dtype).reshape(shape)
    try:  # numpy parses the text in C: several times faster than float() per element
        values = np.array(data.split(b","), dtype=np.float64) if data else np.zeros(0)
    except ValueError as exc:
        raise UnsupportedTrace(f"tensor {raw.get('name')}: {exc}") from exc
    if values.size != count:
        raise UnsupportedTrace(f"tensor {raw.get('name')}: {values.size} values for shape {shape}")
    return values.astype(dtype).reshape(shape)


def parse_trace(text: str | bytes, model: str, inputs: bool = True) -> list[TraceSample]:
    """Every request of ``model`` in one trace file (normally one); ``inputs=False`` skips parsing inputs.
    The orchestrator's own requests (``protocol.OWN_REQUEST``: golden probes, replays) are left out.

    Only ``model``'s own tensors are converted: an ensemble's steps' tensors (often far larger than the
    client's) are cut out and never parsed; the steps' versions come in ``TraceSample.steps``."""
    skeleton, data = split_data(text.encode() if isinstance(text, str) else text)
    entries = json.loads(skeleton)
    if not isinstance(entries, list):
        raise ValueError("a trace file holds a JSON list")
    by_id: dict[object, dict[str, object]] = {}
    cut = iter(data)
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        trace = by_id.setdefault(entry.get("id"), {"inputs": {}, "outputs": {}, "stamps": {}})
        if "model_name" in entry:
            trace["model"], trace["version"] = entry["model_name"], entry.get("model_version")
            trace["parent"] = entry.get("parent_id")
            trace["request_id"] = entry.get("request_id", "")
        for stamp in entry.get("timestamps", ()):
            trace["stamps"][stamp["name"]] = int(stamp["ns"])  # type: ignore[index]
        tensor = entry.get("tensor")
        if isinstance(tensor, dict):
            raw = next(cut, b"") if "data" in tensor else b""
            side = {"TENSOR_QUEUE_INPUT": "inputs", "TENSOR_BACKEND_OUTPUT": "outputs"}.get(str(entry.get("activity")))
            if side:
                trace[side][str(tensor.get("name"))] = (tensor, raw)  # type: ignore[index]
    samples = []
    for trace_id, trace in by_id.items():
        if trace.get("model") != model or trace.get("request_id") == OWN_REQUEST:
            continue  # another model's, or the orchestrator's own (a probe): not production's
        raw_inputs: dict[str, tuple[dict[str, object], bytes]] = trace["inputs"]  # type: ignore[assignment]
        outputs: dict[str, tuple[dict[str, object], bytes]] = trace["outputs"]  # type: ignore[assignment]
        if not raw_inputs or not outputs:
            raise UnsupportedTrace("the trace has no tensors (trace_level must include TENSORS)")
        stamps: dict[str, int] = trace["stamps"]  # type: ignore[assignment]
        served = None
        if "REQUEST_START" in stamps and "REQUEST_END" in stamps:
            served = (stamps["REQUEST_END"] - stamps["REQUEST_START"]) / 1e6
        samples.append(TraceSample(
            model=model, version=_version(trace.get("version")),
            inputs={name: _tensor(*raw) for name, raw in raw_inputs.items()} if inputs else {},
            outputs={name: _tensor(*raw) for name, raw in outputs.items()},
            served_ms=served, steps=_steps(by_id, trace_id)))
    return samples


def _version(value: object) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _steps(by_id: dict[object, dict[str, object]], root: object) -> dict[str, int]:
    """Model -> version of every entry below ``root`` (an ensemble's steps, and their steps)."""
    found = {}
    for trace in by_id.values():
        parent, seen = trace.get("parent"), 0
        while parent is not None and parent != root and seen < len(by_id):  # a cycle must not hang the reader
            parent, seen = by_id.get(parent, {}).get("parent"), seen + 1
        version = _version(trace.get("version"))
        if parent == root and isinstance(trace.get("model"), str) and version is not None:
            found[str(trace["model"])] = version
    return found


class Taken(str, enum.Enum):
    SAMPLES = "samples"  # parsed and deleted
    FOREIGN = "foreign"  # another model's: left alone
    GONE = "gone"  # deleted by someone else meanwhile
    PARTIAL = "partial"  # does not parse yet: still being written, left for the next look
    DROPPED = "dropped"  # deleted unread: unsupported, given up on, or skipped on request


@dataclass
class TraceTail:
    """The trace files of one model in Triton's trace folder, each read once and deleted.

    All traced models share the folder; other models' files are recognised from their first
    bytes and remembered by name, so they cost one small read. An ensemble's files begin with a
    step's entry (``nested``): one that names another model first is read whole, once.
    """

    folder: Path
    prefix: str
    model: str
    inputs: bool = True
    nested: bool = False
    _foreign: set[str] = field(default_factory=set)

    def files(self) -> list[Path]:
        return [path for path in trace_files(self.folder, self.prefix) if path.name not in self._foreign]

    def take(self, path: Path, skip: Callable[[], bool] = lambda: False) -> tuple[Taken, list[TraceSample]]:
        """Read and delete one file of this model; ``skip()`` true deletes it unparsed (a full queue)."""
        try:
            with path.open("rb") as handle:
                head = handle.read(HEAD_BYTES)
                owner = model_of(head)
                text = None
                if owner is not None and owner != self.model:
                    if not self.nested:
                        self._remember_foreign(path.name)
                        return Taken.FOREIGN, []
                    text = head + handle.read()
                    if self.model not in names_in(text):
                        return self._not_ours(path, text)
                if skip():  # decided before parsing: skipping costs one small read
                    path.unlink(missing_ok=True)
                    return Taken.DROPPED, []
                text = text if text is not None else head + handle.read()
            samples = parse_trace(text, self.model, self.inputs)
        except FileNotFoundError:
            return Taken.GONE, []
        except UnsupportedTrace:
            path.unlink(missing_ok=True)
            return Taken.DROPPED, []
        except ValueError:  # json.JSONDecodeError: maybe still being written
            if time.time() - _mtime(path) > PARTIAL_GRACE_S:
                path.unlink(missing_ok=True)
                return Taken.DROPPED, []
            return Taken.PARTIAL, []
        path.unlink(missing_ok=True)
        return Taken.SAMPLES, samples

    def remove_all(self) -> int:
        """Delete this model's remaining files (tracing is off): files written after the last read."""
        removed = 0
        for path in trace_files(self.folder, self.prefix):
            try:
                with path.open("rb") as handle:
                    head = handle.read(HEAD_BYTES)
                    owner = model_of(head)
                    if self.nested and owner is not None and owner != self.model \
                            and self.model in names_in(head + handle.read()):
                        owner = self.model
            except FileNotFoundError:
                continue
            if owner == self.model:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _not_ours(self, path: Path, text: bytes) -> tuple[Taken, list[TraceSample]]:
        """A nested reader's file that does not name its ensemble: another model's, or the ensemble's before
        Triton finished writing it (the steps' entries come first)."""
        try:
            json.loads(split_data(text)[0])
        except ValueError:
            if time.time() - _mtime(path) <= PARTIAL_GRACE_S:
                return Taken.PARTIAL, []
        self._remember_foreign(path.name)  # complete, or never completed: not ours to delete
        return Taken.FOREIGN, []

    def _remember_foreign(self, name: str) -> None:
        if len(self._foreign) >= FOREIGN_MEMORY:
            self._foreign.clear()
        self._foreign.add(name)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
