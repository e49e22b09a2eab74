"""What the use cases and daemons need from Triton: one protocol, two implementations.

``client.Triton`` speaks to a real server (``control.TritonControl`` over the stdlib, tritonclient
for inference only); ``twin.TritonTwin`` models the same behaviour in memory (tests, simulated
fleets). ``tests/contract/`` runs one set of assertions against both, so the twin cannot drift
from the server.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: a command that never infers does not load numpy
    import numpy as np


class TritonState(str, enum.Enum):
    """A version's state in Triton's repository index."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"  # failed to load, or unloaded
    UNKNOWN = ""  # listed in the repository but never loaded

    @classmethod
    def parse(cls, text: str) -> TritonState:
        try:
            return cls(text.upper())
        except ValueError:
            return cls.UNKNOWN

    @property
    def holds_files(self) -> bool:
        """Triton may still read the version's folder: no file under it may change."""
        return self in (TritonState.READY, TritonState.LOADING, TritonState.UNLOADING)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: int | None
    state: TritonState
    reason: str


@dataclass(frozen=True)
class ExecutionStats:
    """One version's counters from Triton's statistics API, since it loaded.

    An execution is one run of the model (a batch); ``compute_ns`` is the time those runs spent
    in the backend (Triton's compute_input + compute_infer + compute_output): device time, not
    queueing or the HTTP round trip. ``success_*`` count requests, their whole time inside Triton;
    ``fail_*`` the requests the model answered with an error (the backend raised, a stub died). A request
    Triton refuses before it reaches the model (wrong shape, unknown output) is neither.
    """

    executions: int = 0
    inferences: int = 0  # samples: a batch of 4 counts 4
    compute_ns: int = 0
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0

    @property
    def requests(self) -> int:
        """Every request the model answered, well or with an error."""
        return self.success_count + self.fail_count


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: int
    outputs: dict[str, np.ndarray]


class TritonAPI(Protocol):
    """One server. Implementations are not thread-safe: give each thread its own."""

    url: str

    def close(self) -> None: ...

    # health
    def is_live(self) -> bool: ...

    def require_live(self) -> None:
        """Live, and the model-control API accepts us (a wrong admin key fails here, before any change)."""

    # repository and model control
    def index(self) -> list[IndexEntry]: ...

    def states(self, model: str) -> dict[int, IndexEntry]: ...

    def load(self, model: str, config_json: str | None = None) -> None:
        """All or nothing: blocks until the versions of the policy are READY; on failure the old set serves."""

    def unload(self, model: str) -> None: ...

    def wait_unloaded(self, model: str, versions: set[int] | None, timeout_s: float) -> bool:
        """True once ``versions`` (all when None) neither serve nor are on their way in or out."""

    def model_ready(self, model: str, version: int | None = None) -> bool: ...

    # inference: a request naming no version goes to the highest READY version; ``request_id`` goes into
    # Triton's trace of the request (``OWN_REQUEST``: the orchestrator's own, never taken for production's)
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: int | None = None, request_id: str = "") -> InferenceResult: ...

    # tracing and statistics (shadow traffic, drift sampling)
    def trace_settings(self, model: str | None = None) -> dict[str, object]: ...

    def update_trace_settings(self, model: str | None, settings: dict[str, object]) -> dict[str, object]: ...

    def inference_stats(self, model: str) -> tuple[int, int]:
        """Successful requests of ``model`` (all versions) and their total time inside Triton in ns."""

    def execution_stats(self, model: str) -> dict[int, ExecutionStats]:
        """Each loaded version's execution counters (what the watcher's probes cost, ``daemons/probe_schedule.py``)."""


POLL_S = 0.02
# The request id of every inference the orchestrator sends to a model clients use (golden probes, the served
# version's golden pass and replay answers): Triton writes it into the request's trace (measured on 2.51:
# the model's entry gets "request_id"), so that drift, shadow and replay sample production's requests only.
OWN_REQUEST = "orchestrator"


def wait_unloaded(states: Callable[[], dict[int, IndexEntry]], versions: set[int] | None, timeout_s: float,
                  clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    """Poll ``states`` until ``versions`` (all when None) hold no files; False at the deadline.

    Triton unloads in the background after ``load_model``/``unload_model`` return, and no file
    under a model may change while it is UNLOADING.
    """
    deadline = clock() + timeout_s
    while True:
        if not [v for v, e in states().items() if e.state.holds_files and (versions is None or v in versions)]:
            return True
        if clock() >= deadline:
            return False
        sleep(POLL_S)
