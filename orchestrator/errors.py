"""Exceptions raised by the orchestrator.

Every error a user can act on derives from ``OrchestratorError``; the CLI turns
it into one line and the exit code carried by its class.

    OrchestratorError
    ├── UsageError              bad arguments, unknown model or version  (exit 2)
    │   ├── UnknownModel
    │   └── UnknownVersion
    ├── PackageRejected         an import refused; nothing was filed     (exit 3)
    ├── PolicyViolation         a rule forbids the requested switch      (exit 4)
    ├── CandidateRejected       a candidate failed a check; serving kept (exit 5)
    ├── RepositoryCorrupt       config.pbtxt / meta.yaml unreadable      (exit 6)
    ├── Busy                    another command holds the model's lock   (exit 7)
    └── TritonError             Triton answered with an error            (exit 8)
        ├── TritonUnreachable   no answer from the URL                   (exit 9)
        └── LoadFailed          Triton could not load a version          (exit 8)
"""

from __future__ import annotations


class OrchestratorError(Exception):
    exit_code = 1


class UsageError(OrchestratorError):
    exit_code = 2


class UnknownModel(UsageError):
    def __init__(self, model: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown model {model!r} (models in the repository: {listing})")
        self.model = model


class UnknownVersion(UsageError):
    def __init__(self, model: str, version: int, known: list[int]) -> None:
        listing = ", ".join(f"v{v}" for v in known) if known else "none"
        super().__init__(f"model {model!r} has no version v{version} (versions: {listing})")
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


class CandidateRejected(OrchestratorError):
    exit_code = 5

    def __init__(self, model: str, version: int, reason: str) -> None:
        super().__init__(f"{model} v{version} not promoted: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


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


class LoadFailed(TritonError):
    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"Triton could not load {model}: {reason}")
        self.model = model
        self.reason = reason
