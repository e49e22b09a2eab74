"""Every error the orchestrator raises on purpose, with the exit code the CLI gives it.

The CLI (``orchestrator/cli/main.py``) is the only place that turns these into one line on
stderr and an exit code; foreign errors are translated where they arise (Triton's answers in
``triton/control.py`` and ``triton/client.py``, the disk as ``WriteFailed``), so the CLI meets
nothing else but a bug.

    OrchestratorError                                                       (exit 1)
    ├── UsageError              bad arguments, unknown model or version      (exit 2)
    │   ├── UnknownModel        a model the repository does not hold         (exit 2)
    │   │   └── UnmanagedModel  an ensemble or plain step: no versions of ours (exit 2)
    │   └── UnknownVersion      a version the model does not have            (exit 2)
    ├── PackageRejected         an import refused; nothing was filed         (exit 3)
    ├── PolicyViolation         a rule forbids the requested switch          (exit 4)
    │   ├── NotEnoughMemory     the candidate does not fit beside production (exit 4)
    │   ├── StaleJudgement      the version the watcher judged no longer serves (exit 4)
    │   └── UnverifiedResident  config.pbtxt would serve unverified versions only (exit 4)
    ├── CandidateRejected       a candidate failed a check; serving kept     (exit 5)
    │   └── ShadowFailed        a shadow run failed its gate                 (exit 5)
    ├── RepositoryCorrupt       config.pbtxt / meta.yaml / policy unreadable (exit 6)
    ├── Busy                    another command holds the model's lock       (exit 7)
    ├── TritonError             Triton answered with an error                (exit 8)
    │   ├── TritonUnreachable   no answer from the URL                       (exit 9)
    │   │   └── NotTriton       something else answers at the URL            (exit 9)
    │   ├── TritonForbidden     the locked control API refused our key       (exit 8)
    │   └── LoadFailed          Triton could not load a version              (exit 8)
    ├── FetchFailed             a download did not arrive                    (exit 10)
    ├── WriteFailed             the disk refused a write (full, read-only)   (exit 11)
    ├── EngineBuildError        a TensorRT engine could not be built         (exit 12)
    ├── EmbeddedTritonError     the embedded local Triton did not start      (exit 13)
    ├── NotHealthy              `status`: out of sync or serving unverified  (exit 14)
    ├── FleetError              a fleet command could not be carried out     (exit 15)
    │   ├── PlanRejected        a rollout plan invalid or not signed by a release key (exit 15)
    │   ├── DocumentRefused     a signed fleet document refused (forged, replayed, expired) (exit 15)
    │   ├── BrokerFailed        our Mosquitto did not start, or died         (exit 15)
    │   ├── LinkDown            no MQTT connection now, or it dropped        (exit 15)
    │   ├── AuthRefused         the broker refused the credentials (CONNACK) (exit 15)
    │   └── PublishRefused      the broker refused a publish (PUBACK code)   (exit 15)
    │       └── NotAuthorized   its ACL forbids the topic (PUBACK 0x87)      (exit 15)
    └── Interrupted             Ctrl-C / SIGTERM during a command            (exit 130)

An exception outside this tree is a bug: the CLI prints one line naming it and ``--verbose``
(exit 70, EX_SOFTWARE), never a bare traceback.
"""

from __future__ import annotations

UNEXPECTED_EXIT = 70


class OrchestratorError(Exception):
    exit_code = 1


class UsageError(OrchestratorError):
    exit_code = 2


class UnknownModel(UsageError):
    def __init__(self, model: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown model {model!r} (models in the repository: {listing})")
        self.model = model


class UnmanagedModel(UnknownModel):
    """A model in the repository that no version command applies to: an ensemble, a plain step."""

    def __init__(self, model: str, what: str, known: list[str]) -> None:
        UsageError.__init__(self, f"{model!r} is {what} (managed models: {', '.join(known) or 'none'})")
        self.model = model


class UnknownVersion(UsageError):
    def __init__(self, model: str, version: int, known: list[int], pruned: str | None = None) -> None:
        listing = ", ".join(f"v{v}" for v in known) if known else "none"
        gone = f": v{version} was pruned (its meta.yaml and checksums are in {pruned})" if pruned else ""
        super().__init__(f"model {model!r} has no version v{version}{gone} (versions: {listing})")
        self.model = model
        self.version = version


class PackageRejected(OrchestratorError):
    exit_code = 3

    def __init__(self, package: str, reason: str) -> None:
        super().__init__(f"package {package} refused: {reason}")
        self.reason = reason
        self.journaled = False  # set once the refusal is in a model's journal


class PolicyViolation(OrchestratorError):
    exit_code = 4


class NotEnoughMemory(PolicyViolation):
    """The device cannot hold the candidate beside what serves: refused before it loads."""


class StaleJudgement(PolicyViolation):
    """An automatic rollback of a version that no longer serves (an operator switched meanwhile): dropped."""


class UnverifiedResident(PolicyViolation):
    """config.pbtxt makes Triton load versions that may not serve and nothing else can: nothing written or loaded."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model


class NotHealthy(OrchestratorError):
    """``status`` found a model out of sync with Triton or serving a version that is not verified (exit 14),
    or could not ask Triton: then the exit code of that error (9 unreachable or not Triton, 8 refused)."""

    exit_code = 14

    def __init__(self, message: str, triton_exit_code: int | None = None) -> None:
        super().__init__(message)
        if triton_exit_code:
            self.exit_code = triton_exit_code


class CandidateRejected(OrchestratorError):
    exit_code = 5

    outcome = "not promoted"

    def __init__(self, model: str, version: int, reason: str) -> None:
        super().__init__(f"{model} v{version} {self.outcome}: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


class ShadowFailed(CandidateRejected):
    """The verdict was recorded; the command still fails so that scripts notice."""

    outcome = "failed its shadow run"


class RepositoryCorrupt(OrchestratorError):
    exit_code = 6


class Busy(OrchestratorError):
    exit_code = 7


class TritonError(OrchestratorError):
    exit_code = 8


class TritonUnreachable(TritonError):
    exit_code = 9

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"Triton at {url} is unreachable: {detail}")
        self.url = url


class NotTriton(TritonUnreachable):
    """Something answers at the URL, but not Triton (a proxy's page, another service): Triton is not there."""

    def __init__(self, url: str, detail: str) -> None:
        TritonError.__init__(self, f"{url} is not Triton: {detail} (check --url / ORCH_TRITON_URL)")
        self.url = url


class TritonForbidden(TritonError):
    """A restricted API (model repository, trace, logging, shared memory) without the right key: a setup
    error, never the model's fault."""

    def __init__(self, url: str, what: str, key_sent: bool) -> None:
        have = "the admin key sent was refused" if key_sent else "no admin key was sent"
        super().__init__(f"{what} refused by Triton at {url} (403): {have}; set ORCH_ADMIN_KEY or "
                         f"ORCH_ADMIN_KEY_FILE to the key Triton was started with")
        self.url = url


class LoadFailed(TritonError):
    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"Triton could not load {model}: {reason}")
        self.model = model
        self.reason = reason


class FetchFailed(OrchestratorError):
    """The server could not be reached or did not deliver; what arrived is kept for the next try."""

    exit_code = 10

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"download of {url} failed: {detail}")
        self.url = url
        self.detail = detail


class WriteFailed(OrchestratorError):
    """An OSError from the disk, in words; nothing half-written is kept."""

    exit_code = 11

    def __init__(self, error: OSError) -> None:
        where = f" ({error.filename})" if error.filename else ""
        super().__init__(f"cannot write{where}: {error.strerror or error}; the next command repairs any "
                         f"half-done step")
        self.error = error


class EngineBuildError(OrchestratorError):
    exit_code = 12


class EmbeddedTritonError(OrchestratorError):
    exit_code = 13


class Interrupted(OrchestratorError):
    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted; the next command repairs any half-done step")


class FleetError(OrchestratorError):
    exit_code = 15


class PlanRejected(FleetError):
    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"rollout plan {source} refused: {reason}")
        self.source, self.reason = source, reason


class DocumentRefused(FleetError):
    """``reason`` is one of the closed set in ``fleet/documents.py`` (``REFUSALS``), for journals and counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# Every class above, for the test that keeps the exit codes distinct.
ERROR_TYPES: tuple[type[OrchestratorError], ...] = (
    OrchestratorError, UsageError, UnknownModel, UnmanagedModel, UnknownVersion, PackageRejected, PolicyViolation,
    NotEnoughMemory, StaleJudgement, UnverifiedResident, CandidateRejected, ShadowFailed, RepositoryCorrupt, Busy,
    TritonError, TritonUnreachable, NotTriton, TritonForbidden, LoadFailed, FetchFailed, WriteFailed, EngineBuildError,
    EmbeddedTritonError, NotHealthy, FleetError, PlanRejected, DocumentRefused, Interrupted,
)


class BrokerFailed(FleetError):
    """Our Mosquitto did not start, did not listen in time, or died; the message quotes its log."""


class LinkDown(FleetError):
    """No MQTT connection at the moment, or it dropped before the broker acknowledged a publish."""

    def __init__(self, client_id: str, detail: str) -> None:
        super().__init__(f"MQTT link {client_id!r} is down: {detail}")
        self.client_id = client_id


class AuthRefused(FleetError):
    """The broker refused the connection for its credentials (MQTT 5 CONNACK 0x86 or 0x87)."""

    def __init__(self, user: str, broker: str, reason: str) -> None:
        super().__init__(f"the broker at {broker} refused user {user!r}: {reason}; check the device's user name "
                         f"and password (or its certificate) against the broker's password file")
        self.user = user
        self.reason = reason


class PublishRefused(FleetError):
    """The broker answered a QoS 1 publish with a failing MQTT 5 PUBACK reason code."""

    hint = ""

    def __init__(self, user: str, topic: str, reason: str) -> None:
        super().__init__(f"the broker refused {user!r} publishing to {topic}: {reason}{self.hint}")
        self.user = user
        self.topic = topic
        self.reason = reason


class NotAuthorized(PublishRefused):
    """PUBACK 0x87: the broker's ACL does not let this user write that topic."""

    hint = " (its ACL does not let this user write the topic)"


ERROR_TYPES += (BrokerFailed, LinkDown, AuthRefused, PublishRefused, NotAuthorized)
