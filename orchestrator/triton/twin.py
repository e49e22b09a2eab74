"""An in-memory Triton: what ``client.Triton`` sees of a real server (2.51, EXPLICIT mode), without one.

Models the behaviour measured in ``../shared/triton-notes.md`` and proved by ``tests/contract/``:
all-or-nothing loads, new versions READY before dropped ones go UNLOADING, un-versioned requests
to the highest READY version, the APIs an admin key locks (``control.RESTRICTED_APIS``: here
load, unload, index and trace settings), and the errors ``client.Triton`` translates. No threads
and no timers: an UNLOADING version's end is computed from the clock when someone looks, so
thousands of twins fit in one process. Time comes from an injectable clock and sleep
(``VirtualClock`` for tests and simulated fleets).

Versions are the numeric folders under ``repository/<model>/`` (symlinks followed), or, without
a repository, those registered with ``add_version``. A twin cannot run a model: each version gets
a behaviour (``inputs -> outputs``), by default zeros shaped by the config's outputs.

Statistics count what the twin served: one execution per request (no dynamic batching), the
request's batch as its inferences, and as compute time either the behaviour's own time on the
clock or, when set (``compute_s`` of the twin or of a version), that many seconds per execution,
which the request then also takes on the clock: a twin over a ``VirtualClock`` models a device
whose every probe costs a known amount. A behaviour that raises is a failed request (``fail_count``:
one execution, no inferences, no compute time), as a python model whose execute() raises is on 2.51.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from orchestrator.errors import LoadFailed, TritonError, TritonForbidden, TritonUnreachable
from orchestrator.triton.control import RESTRICTED_APIS
from orchestrator.triton.protocol import ExecutionStats, IndexEntry, InferenceResult, TritonState, wait_unloaded

Behaviour = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
# Called when a version loads (the backend's initialize()): an exception fails that version's load.
BehaviourFactory = Callable[[str, int, "Path | None"], "Behaviour | None"]

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64, "TYPE_INT8": np.int8,
           "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT8": np.uint8,
           "TYPE_BOOL": np.bool_}
# What the embedded server answers before any update (all strings, trace_level a list).
TRACE_DEFAULTS: dict[str, object] = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                                     "log_frequency": "0", "trace_file": "", "trace_mode": "triton"}
_NUMERIC_TRACE = ("trace_rate", "trace_count", "log_frequency")


class VirtualClock:
    """A clock that only moves when slept on: ``TritonTwin(clock=c, sleep=c.sleep)``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass(frozen=True)
class VersionSpec:
    """What a version folder does once Triton loads it (injected faults included)."""

    behaviour: Behaviour | None = None  # None: the twin's behaviour_for, else zeros
    load_error: str | None = None  # initialize() raises: the load fails with this reason
    infer_error: str | None = None  # every request answers this error
    hung: bool = False  # requests never answer: the client times out (TritonUnreachable)
    load_latency_s: float | None = None  # None: the twin's default
    unload_latency_s: float | None = None
    compute_s: float | None = None  # device time per execution; None: the twin's default


@dataclass(frozen=True)
class _Slot:
    """One version's row in the index, and the instance behind it while READY."""

    state: TritonState
    reason: str = ""
    until: float = 0.0  # UNLOADING ends at this clock time
    config: dict | None = None
    behaviour: Behaviour | None = None
    crashed: bool = False


class _Server:
    """State shared by every connection to one twin (see ``TritonTwin.with_key``)."""

    def __init__(self, repository: Path | None, admin_key: str | None, load_models: tuple[str, ...],
                 load_latency_s: float, unload_latency_s: float, clock: Callable[[], float],
                 behaviour_for: BehaviourFactory | None, compute_s: float | None = None) -> None:
        self.repository, self.admin_key, self.load_models = repository, admin_key, load_models
        self.compute_s = compute_s
        self.load_latency_s, self.unload_latency_s = load_latency_s, unload_latency_s
        self.clock, self.behaviour_for = clock, behaviour_for
        self.lock = threading.Lock()  # the state; never held while time passes
        self.loading = threading.Lock()  # loads are serialised, as Triton's are
        self.up = False
        self.specs: dict[tuple[str, int], VersionSpec] = {}
        self.memory: dict[str, set[int]] = {}  # without a repository: the "folders"
        self.configs: dict[str, dict] = {}  # without a repository: the "config.pbtxt" files
        self.reset()

    def reset(self) -> None:
        """What a restart forgets: everything the control API did."""
        self.slots: dict[str, dict[int, _Slot]] = {}
        self.overrides: dict[str, dict] = {}  # a load's config sticks until unload (measured)
        self.stats: dict[tuple[str, int], ExecutionStats] = {}
        self.trace = dict(TRACE_DEFAULTS)
        self.model_trace: dict[str, dict[str, object]] = {}

    def spec(self, model: str, version: int) -> VersionSpec:
        return self.specs.get((model, version), VersionSpec())

    def table(self, model: str) -> dict[int, _Slot]:
        """The model's rows, with every unload whose time has come finished."""
        table = self.slots.setdefault(model, {})
        now = self.clock()
        for version, slot in table.items():
            if slot.state is TritonState.UNLOADING and slot.until <= now:
                table[version] = _Slot(TritonState.UNAVAILABLE, "unloaded")
        return table

    def ready(self, model: str) -> dict[int, _Slot]:
        return {v: s for v, s in self.table(model).items() if s.state is TritonState.READY}

    def unloading(self, model: str, version: int, slot: _Slot | None) -> _Slot:
        latency = self.spec(model, version).unload_latency_s
        latency = self.unload_latency_s if latency is None else latency
        # A crashed python stub never finishes unloading on 2.51 (measured: UNLOADING after 60 s).
        return _Slot(TritonState.UNLOADING, until=math.inf if slot and slot.crashed else self.clock() + latency)

    def models(self) -> set[str]:
        if self.repository is None:
            names = set(self.memory) | set(self.configs)
        else:
            names = {p.name for p in self.repository.iterdir() if p.is_dir()} if self.repository.is_dir() else set()
        # A model whose folder is gone leaves the index, unless an instance still holds its files.
        return names | {m for m, t in self.slots.items() if any(s.state.holds_files for s in t.values())}

    def available(self, model: str) -> dict[int, Path | None]:
        if self.repository is None:
            return dict.fromkeys(self.memory.get(model, ()))
        folder = self.repository / model
        children = list(folder.iterdir()) if folder.is_dir() else []
        # Triton ignores names that are not numbers or start with 0 (staging folders rely on it).
        return {int(p.name): p for p in children if p.name.isdigit() and not p.name.startswith("0") and p.is_dir()}

    def config(self, model: str, config_json: str | None) -> dict:
        fail = LoadFailed(model, f"failed to load '{model}', failed to poll from model repository")
        if model not in self.models():
            raise fail
        if config_json is not None:
            try:
                config = json.loads(config_json)
            except ValueError:
                raise fail from None
            if not isinstance(config, dict) or config.get("name", model) != model:
                raise fail
            return config
        if model in self.overrides:
            return self.overrides[model]
        if self.repository is None:
            if model not in self.configs:
                raise fail
            return self.configs[model]
        try:
            return read_config(self.repository / model / "config.pbtxt")
        except (OSError, ValueError) as exc:
            raise LoadFailed(model, f"failed to load '{model}': {exc}") from exc


def read_config(path: Path) -> dict:
    """config.pbtxt as the dict ``json.loads(MessageToJson(config, preserving_proto_field_name=True))`` gives."""
    from google.protobuf import json_format, text_format  # noqa: PLC0415 - only a twin over a folder needs it
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415 - ~350 ms to import

    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def selected(config: dict, available: dict[int, Path | None]) -> list[int]:
    """The versions the config's version_policy picks among ``available`` (absent: latest 1)."""
    policy = config.get("version_policy") or {"latest": {}}
    if "specific" in policy:
        return sorted({int(v) for v in policy["specific"].get("versions", [])} & set(available))
    if "all" in policy:
        return sorted(available)
    return sorted(available)[-max(1, int(policy["latest"].get("num_versions", 1))):]


def _identity(config: dict | None) -> dict:
    # Triton reloads the kept versions only when something besides these two fields changed.
    return {k: v for k, v in (config or {}).items() if k not in ("version_policy", "instance_group")}


def zeros(config: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The default behaviour: zeros of each output's dims and type, batched like the first input."""
    batched = int(config.get("max_batch_size", 0)) > 0
    batch = [next(iter(inputs.values())).shape[0] if inputs else 1] if batched else []
    return {t["name"]: np.zeros([*batch, *(max(1, int(d)) for d in t.get("dims", []))],
                                _DTYPES.get(t.get("data_type", "TYPE_FP32"), np.float32))
            for t in config.get("output", [])}


def _check_request(model: str, config: dict, inputs: dict[str, np.ndarray], outputs: list[str]) -> str | None:
    """Triton's answer to a request its config refuses (None: accepted). A config without inputs checks nothing."""
    specs = {t["name"]: [int(d) for d in t.get("dims", [])] for t in config.get("input", [])}
    max_batch = int(config.get("max_batch_size", 0))
    for name, array in inputs.items():
        shape = list(array.shape[1:] if max_batch else array.shape)
        if specs and name not in specs:
            return f"unexpected inference input '{name}' for model '{model}'"
        dims = specs.get(name, shape)
        if len(dims) != len(shape) or any(d not in (-1, n) for d, n in zip(dims, shape, strict=False)):
            return f"unexpected shape for input '{name}' for model '{model}'. Expected {dims}, got {list(array.shape)}"
        if max_batch and array.shape[0] > max_batch:
            return f"inference request batch-size must be <= {max_batch} for '{model}'"
    known = {t["name"] for t in config.get("output", [])}
    missing = [name for name in outputs if known and name not in known]
    return f"unexpected inference output '{missing[0]}' for model '{model}'" if missing else None


class TritonTwin:
    """One connection to an in-memory server; ``with_key`` opens another to the same server."""

    def __init__(self, name: str = "triton", repository: Path | None = None, admin_key: str | None = None,
                 key: str | None = None, load_models: tuple[str, ...] = (), load_latency_s: float = 0.0,
                 unload_latency_s: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, timeout_s: float = 10.0,
                 behaviour_for: BehaviourFactory | None = None, compute_s: float | None = None) -> None:
        self.url = f"twin://{name}"
        self._key, self._clock, self._sleep, self._timeout_s = key, clock, sleep, timeout_s
        self._s = _Server(repository, admin_key, load_models, load_latency_s, unload_latency_s, clock, behaviour_for,
                          compute_s)
        self.start()

    def with_key(self, key: str | None) -> TritonTwin:
        """Another client of the same server, sending ``key`` (like ``Triton(url, admin_key=key)``)."""
        other = object.__new__(TritonTwin)
        other.__dict__.update(self.__dict__, _key=key)
        return other

    # --- the server's life and the test's hands on it -------------------------------------
    def stop(self) -> None:
        self._s.up = False

    def start(self) -> None:
        """Up again with nothing loaded but ``load_models``, as a restarted server in EXPLICIT mode.

        The constructor starts the twin; without a repository, register the models, then start() again.
        """
        with self._s.lock:
            self._s.reset()
            self._s.up = True
        for model in self._s.load_models:
            with contextlib.suppress(LoadFailed):  # the server starts anyway (--exit-on-error=false)
                self.with_key(self._s.admin_key).load(model)

    def add_version(self, model: str, version: int, **spec: object) -> None:
        """Without a repository: a version folder appears (``spec``: VersionSpec fields)."""
        self._s.memory.setdefault(model, set()).add(version)
        self.configure(model, version, **spec)

    def remove_version(self, model: str, version: int) -> None:
        self._s.memory.get(model, set()).discard(version)

    def set_config(self, model: str, config: str | dict) -> None:
        """Without a repository: the model's config.pbtxt, in the form ``load(config_json=...)`` takes."""
        self._s.configs[model] = json.loads(config) if isinstance(config, str) else dict(config)

    def configure(self, model: str, version: int, **spec: object) -> None:
        """Change what a version does (VersionSpec fields); faults of requests apply at once, of loads next load."""
        self._s.specs[(model, version)] = replace(self._s.spec(model, version), **spec)  # type: ignore[arg-type]

    def crash(self, model: str, version: int) -> None:
        """The running instance's backend process dies: requests fail, and its unload never finishes."""
        with self._s.lock:
            table = self._s.table(model)
            if version in table:
                table[version] = replace(table[version], crashed=True)

    # --- TritonAPI -----------------------------------------------------------------------
    def _check(self, what: str, api: str) -> None:
        """Up, and ``api`` (Triton's name of the call's category) open to this client's key."""
        if not self._s.up:
            raise TritonUnreachable(self.url, "[Errno 111] Connection refused")
        # Checked before anything else, as Triton does (an unknown model's trace settings are a 403 too).
        if api in RESTRICTED_APIS and self._s.admin_key and self._key != self._s.admin_key:
            raise TritonForbidden(self.url, what, bool(self._key))

    def close(self) -> None:
        pass

    def is_live(self) -> bool:
        return self._s.up

    def require_live(self) -> None:
        self._check("liveness check", "health")
        self.index()

    def index(self) -> list[IndexEntry]:
        with self._s.lock:
            self._check("repository index", "model-repository")
            entries = []
            for model in sorted(self._s.models()):
                table = self._s.table(model)
                entries += [IndexEntry(model, v, s.state, s.reason) for v, s in sorted(table.items())] or \
                    [IndexEntry(model, None, TritonState.UNKNOWN, "")]  # in the repository, never loaded
            return entries

    def states(self, model: str) -> dict[int, IndexEntry]:
        return {e.version: e for e in self.index() if e.name == model and e.version is not None}

    def load(self, model: str, config_json: str | None = None) -> None:
        s = self._s
        with s.loading:
            with s.lock:
                self._check(f"load of {model}", "model-repository")
                config = s.config(model, config_json)
                available = s.available(model)
                wanted = selected(config, available)
                if not wanted:
                    raise LoadFailed(model, f"load failed for model '{model}': at least one version must be "
                                            f"available under the version policy of model '{model}'")
                serving = s.ready(model)
                fresh = {v: available[v] for v in wanted
                         if v not in serving or _identity(serving[v].config) != _identity(config)}
            built, failed = self._instantiate(model, fresh, config)
            with s.lock:
                self._check(f"load of {model}", "model-repository")  # still up after the load's time
                self._swap(model, set(wanted), built, failed)
                if config_json is not None:
                    s.overrides[model] = config

    def _instantiate(self, model: str, fresh: dict[int, Path | None],
                     config: dict) -> tuple[dict[int, _Slot], dict[int, str]]:
        """Start the fresh versions side by side (the longest latency), each running its initialize()."""
        s = self._s
        latencies = [s.spec(model, v).load_latency_s for v in fresh]
        latency = max((s.load_latency_s if x is None else x for x in latencies), default=0.0)
        if latency > 0:
            self._sleep(latency)  # the index shows the old rows meanwhile: no LOADING on 2.51 (measured)
        built, failed = {}, {}
        for v, folder in fresh.items():
            spec = s.spec(model, v)
            reason, behaviour = spec.load_error, spec.behaviour
            if reason is None and behaviour is None and s.behaviour_for is not None:
                try:
                    behaviour = s.behaviour_for(model, v, folder)
                except Exception as exc:  # initialize() raised: this version fails, as on Triton
                    reason = str(exc) or type(exc).__name__
            if reason is None:
                built[v] = _Slot(TritonState.READY, config=config, behaviour=behaviour)
            else:
                failed[v] = reason
        return built, failed

    def _swap(self, model: str, wanted: set[int], built: dict[int, _Slot], failed: dict[int, str]) -> None:
        s = self._s
        table, serving = s.table(model), s.ready(model)
        if failed:  # all or nothing: the old set serves on, the new instances are discarded
            for v in built:
                if v not in serving:
                    table[v] = s.unloading(model, v, None)
            for v, reason in failed.items():
                if v not in serving:
                    table[v] = _Slot(TritonState.UNAVAILABLE, reason)
            raise LoadFailed(model, f"load failed for model '{model}': " + "; ".join(
                f"version {v} is at UNAVAILABLE state: {reason}" for v, reason in sorted(failed.items())))
        for v, slot in serving.items():
            if v not in wanted:  # dropped only now that the new set is READY
                table[v] = s.unloading(model, v, slot)
        table.update(built)
        for v in built:
            s.stats[(model, v)] = ExecutionStats()

    def unload(self, model: str) -> None:
        with self._s.lock:
            self._check(f"unload of {model}", "model-repository")
            table = self._s.table(model)
            for v, slot in self._s.ready(model).items():
                table[v] = self._s.unloading(model, v, slot)
            self._s.overrides.pop(model, None)

    def wait_unloaded(self, model: str, versions: set[int] | None, timeout_s: float) -> bool:
        return wait_unloaded(lambda: self.states(model), versions, timeout_s, self._clock, self._sleep)

    def model_ready(self, model: str, version: int | None = None) -> bool:
        with self._s.lock:
            self._check("readiness check", "health")
            ready = self._s.ready(model)
            return bool(ready) if version is None else version in ready

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: int | None = None, request_id: str = "") -> InferenceResult:  # no traces: id unused
        what = f"inference on {model}"
        with self._s.lock:
            self._check(what, "inference")
            table, ready = self._s.table(model), self._s.ready(model)
            if version is not None and version not in table:
                error = f"Request for unknown model: '{model}' version {version} is not found"
            elif version is not None and version not in ready:
                error = f"Request for unknown model: '{model}' version {version} is not at ready state"
            elif not ready:
                error = f"Request for unknown model: '{model}' " + ("has no available versions" if table else
                                                                   "is not found")
            else:
                version = version or max(ready)
                slot, spec = ready[version], self._s.spec(model, version)
                error = _check_request(model, slot.config or {}, inputs, outputs) or spec.infer_error or \
                    ("stub process is not healthy" if slot.crashed else None)
        if error:
            raise TritonError(f"{what} failed: {error}")
        if spec.hung:
            self._sleep(self._timeout_s)
            raise TritonUnreachable(self.url, "timed out")
        started = self._clock()
        try:
            produced = slot.behaviour(inputs) if slot.behaviour else zeros(slot.config or {}, inputs)
            result = {name: produced[name] for name in outputs}
        except Exception as exc:  # the backend's error response: a failed request of this version
            with self._s.lock:
                stats = self._s.stats.get((model, version), ExecutionStats())
                self._s.stats[(model, version)] = replace(
                    stats, executions=stats.executions + 1, fail_count=stats.fail_count + 1,
                    fail_ns=stats.fail_ns + max(1, int((self._clock() - started) * 1e9)))
            raise TritonError(f"{what} failed: {exc}") from exc
        charged = spec.compute_s if spec.compute_s is not None else self._s.compute_s
        if charged:
            self._sleep(charged)
        compute_ns = int((self._clock() - started if charged is None else charged) * 1e9)
        batch = len(next(iter(inputs.values()))) if inputs and int((slot.config or {}).get("max_batch_size", 0)) else 1
        with self._s.lock:
            self._s.stats[(model, version)] = _counted(self._s.stats.get((model, version), ExecutionStats()), batch,
                                                       compute_ns, int((self._clock() - started) * 1e9))
        return InferenceResult(model=model, version=version, outputs=result)

    def trace_settings(self, model: str | None = None) -> dict[str, object]:
        with self._s.lock:
            self._check("trace settings", "trace")
            return self._trace(model, "trace settings")

    def _trace(self, model: str | None, what: str) -> dict[str, object]:
        if model is None:
            return dict(self._s.trace)
        if not self._s.ready(model):  # per-model settings exist only for a loaded model (measured)
            raise TritonError(f"{what} failed: Request for unknown model : {model}")
        return {**self._s.trace, **self._s.model_trace.get(model, {})}

    def update_trace_settings(self, model: str | None, settings: dict[str, object]) -> dict[str, object]:
        what = "trace settings update"
        with self._s.lock:
            self._check(what, "trace")
            self._trace(model, what)
            for key, value in settings.items():  # Triton's own refusals, checked before anything changes
                error = None
                if key == "trace_file" and value is not None:
                    error = "trace file location can not be updated through network protocol"
                elif key == "trace_level" and value is not None and not isinstance(value, list):
                    error = "attempt to access JSON non-array as array"
                elif key != "trace_level" and value is not None and not isinstance(value, str):
                    error = "attempt to access JSON non-string as string"
                elif key in _NUMERIC_TRACE and isinstance(value, str) and not value.lstrip("-").isdigit():
                    error = f"Unable to parse '{key}', got: {value}"
                if error:
                    raise TritonError(f"{what} failed: {error}")
            target = self._s.trace if model is None else self._s.model_trace.setdefault(model, {})
            for key, value in settings.items():
                if key not in TRACE_DEFAULTS:
                    continue  # Triton ignores settings it does not know
                if value is not None:
                    target[key] = list(value) if isinstance(value, list) else value
                elif model is None:
                    target[key] = TRACE_DEFAULTS[key]
                else:
                    target.pop(key, None)  # back to the server-wide value
            return self._trace(model, what)

    def inference_stats(self, model: str) -> tuple[int, int]:
        with self._s.lock:
            self._check(f"statistics of {model}", "statistics")
            ready = self._s.ready(model)
            if not ready:
                raise TritonError(f"statistics of {model} failed: requested model '{model}' is not available")
            rows = [self._s.stats.get((model, v), ExecutionStats()) for v in ready]
            return sum(r.success_count for r in rows), sum(r.success_ns for r in rows)

    def execution_stats(self, model: str) -> dict[int, ExecutionStats]:
        with self._s.lock:
            self._check(f"statistics of {model}", "statistics")
            ready = self._s.ready(model)
            if not ready:
                raise TritonError(f"statistics of {model} failed: requested model '{model}' is not available")
            return {v: self._s.stats.get((model, v), ExecutionStats()) for v in sorted(ready)}


def _counted(stats: ExecutionStats, batch: int, compute_ns: int, request_ns: int) -> ExecutionStats:
    """One more successful request, run as one execution of ``batch`` samples."""
    return ExecutionStats(stats.executions + 1, stats.inferences + batch, stats.compute_ns + compute_ns,
                          stats.success_count + 1, stats.success_ns + max(request_ns, compute_ns))
