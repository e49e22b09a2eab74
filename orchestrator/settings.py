"""Settings, read once at start-up from flags and the environment, and validated there."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UsageError

ENV_REPOSITORY = "ORCH_REPOSITORY"
ENV_URL = "ORCH_TRITON_URL"
ENV_ADMIN_KEY = "ORCH_ADMIN_KEY"
ENV_ADMIN_KEY_FILE = "ORCH_ADMIN_KEY_FILE"
ENV_DEFAULT_MODEL = "ORCH_DEFAULT_MODEL"
ENV_STATE_DIR = "ORCH_STATE_DIR"
ENV_TENSORRT_VERSION = "ORCH_TENSORRT_VERSION"
ENV_COMPUTE_CAPABILITY = "ORCH_COMPUTE_CAPABILITY"
ENV_MAX_VERSION_JUMP = "ORCH_MAX_VERSION_JUMP"


@dataclass(frozen=True)
class Settings:
    repository: Path
    state_dir: Path | None = None  # default: orchestrator_state/ beside the repository
    triton_url: str = "http://127.0.0.1:8000"
    admin_key: str | None = None
    default_model: str | None = None
    timeout_s: float = 10.0
    load_timeout_s: float = 600.0
    lock_timeout_s: float = 30.0
    tensorrt_version: str | None = None  # the server's TensorRT, to refuse plans built for another one
    compute_capability: str | None = None  # the server's GPU, e.g. "8.7" on Orin
    actor: str = ""
    # How far past the highest filed version a package may number itself (a typo'd 1000000 would
    # otherwise be filed, and every later version would have to be larger still).
    max_version_jump: int = 1000

    def __post_init__(self) -> None:
        if not self.repository.is_dir():
            raise UsageError(f"model repository {self.repository} is not a folder (set --repository or "
                             f"{ENV_REPOSITORY})")
        if self.state_dir is None:
            object.__setattr__(self, "state_dir", self.repository.parent / "orchestrator_state")
        for name in ("timeout_s", "load_timeout_s", "lock_timeout_s"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive")
        if self.max_version_jump < 1:
            raise UsageError(f"{ENV_MAX_VERSION_JUMP} must be a whole number >= 1")

    def __repr__(self) -> str:  # never print the key
        return (f"Settings(repository={self.repository}, state_dir={self.state_dir}, "
                f"triton_url={self.triton_url}, admin_key=***)")


def default_actor() -> str:
    actor = os.environ.get("ORCH_ACTOR")
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def read_admin_key(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(ENV_ADMIN_KEY):
        return os.environ[ENV_ADMIN_KEY]
    path = os.environ.get(ENV_ADMIN_KEY_FILE)
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise UsageError(f"cannot read the admin key file {path}: {exc.strerror}") from exc
    return None


def from_environment(repository: str | None = None, state_dir: str | None = None, url: str | None = None,
                     default_model: str | None = None, timeout_s: float = 10.0,
                     lock_timeout_s: float = 30.0) -> Settings:
    return Settings(
        repository=Path(repository or os.environ.get(ENV_REPOSITORY, "model_repository")).resolve(),
        state_dir=Path(state_dir or os.environ[ENV_STATE_DIR]).resolve() if (state_dir or os.environ.get(
            ENV_STATE_DIR)) else None,
        triton_url=url or os.environ.get(ENV_URL, "http://127.0.0.1:8000"),
        admin_key=read_admin_key(),
        default_model=default_model or os.environ.get(ENV_DEFAULT_MODEL) or None,
        timeout_s=timeout_s,
        lock_timeout_s=lock_timeout_s,
        tensorrt_version=os.environ.get(ENV_TENSORRT_VERSION) or None,
        compute_capability=os.environ.get(ENV_COMPUTE_CAPABILITY) or None,
        actor=default_actor(),
        max_version_jump=_whole_number(ENV_MAX_VERSION_JUMP, os.environ.get(ENV_MAX_VERSION_JUMP), 1000),
    )


def _whole_number(name: str, value: str | None, default: int) -> int:
    if value is None or not value.strip():
        return default
    if not value.strip().isdigit():
        raise UsageError(f"{name}={value!r}: a whole number, please")
    return int(value)
