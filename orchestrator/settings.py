"""Settings, read once at start-up from flags and the environment, and validated there."""

from __future__ import annotations

import getpass
import os
import socket
import stat
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
KEY_FILE_MAX_BYTES = 4096  # a key is a line; a bigger file is the wrong file


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
    """The key for Triton's restricted APIs: ``explicit``, else ORCH_ADMIN_KEY, else ORCH_ADMIN_KEY_FILE's."""
    if explicit:
        return _checked_key(explicit, "the admin key given")
    if os.environ.get(ENV_ADMIN_KEY):
        return _checked_key(os.environ[ENV_ADMIN_KEY], ENV_ADMIN_KEY)
    path = os.environ.get(ENV_ADMIN_KEY_FILE)
    return read_key_file(Path(path)) if path else None


def read_key_file(path: Path) -> str:
    """The key in ``path``: a regular file of at most 4 KiB that "other" users cannot open.

    Group access is allowed: Docker and Kubernetes secrets, or a service group shared with
    Triton, commonly grant it, and that group is trusted with the device's control API anyway.
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a directory, FIFO or device is never opened
            raise _not_a_key_file(path)
        # O_NONBLOCK: a FIFO swapped in after the stat cannot hang the open; fstat then checks
        # what was opened, not what the path named a moment before.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC), "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _not_a_key_file(path)
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o007:
                raise UsageError(f"the admin key file {path} has mode {mode:04o}, open to every user on this "
                                 f"machine: chmod 600 {path}")
            data = file.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the admin key file {path}: {exc.strerror or exc} (set "
                         f"{ENV_ADMIN_KEY_FILE} to a file this user can read)") from exc
    if len(data) > KEY_FILE_MAX_BYTES:
        raise UsageError(f"the admin key file {path} is larger than {KEY_FILE_MAX_BYTES} bytes: not a key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the admin key in {path} is not ASCII text") from None
    return _checked_key(text.rstrip("\r\n"), f"the admin key in {path}")


def _not_a_key_file(path: Path) -> UsageError:
    return UsageError(f"the admin key file {path} is not a regular file; set {ENV_ADMIN_KEY_FILE} to the file "
                      f"that holds the key")


def _checked_key(key: str, source: str) -> str:
    # What both an HTTP header and gRPC metadata carry unchanged; docker/triton-entrypoint.sh
    # applies the same rule, so Triton and the orchestrator never disagree about a key.
    if not key:
        raise UsageError(f"{source} is empty; put the key Triton was started with there")
    if not all("!" <= ch <= "~" for ch in key):
        raise UsageError(f"{source} has spaces, control characters or non-ASCII characters (or more than "
                         f"one line); the key must be one line of printable ASCII")
    return key


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
