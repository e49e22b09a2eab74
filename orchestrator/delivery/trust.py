"""Which packages a device files: the trust policy, read from the environment once.

Kept apart from ``signing.py`` so that a command that files nothing never loads cryptography.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.delivery.archive import SIGNATURE_FILE
from orchestrator.errors import PackageRejected, UsageError

log = logging.getLogger(__name__)

ENV_TRUSTED_KEYS = "ORCH_TRUSTED_KEYS"
ENV_ALLOW_UNSIGNED = "ORCH_ALLOW_UNSIGNED"


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("", "0", "false", "no"):
        return False
    if lowered in ("1", "true", "yes"):
        return True
    raise UsageError(f"{name}={value!r}: use 1 or 0")


@dataclass(frozen=True)
class TrustPolicy:
    """Which packages a device files: those signed by a key in ``trusted_keys``, and unsigned ones if allowed."""

    trusted_keys: Path
    allow_unsigned: bool = False  # development only; every unsigned package accepted is logged

    @classmethod
    def from_environment(cls, state_dir: Path, environ: Mapping[str, str] = os.environ) -> TrustPolicy:
        folder = environ.get(ENV_TRUSTED_KEYS)
        return cls(trusted_keys=Path(folder).resolve() if folder else state_dir / "trusted_keys",
                   allow_unsigned=_flag(ENV_ALLOW_UNSIGNED, environ.get(ENV_ALLOW_UNSIGNED, "")))

    def check(self, folder: Path, label: str) -> str | None:
        """The signer's key id, or None for an unsigned package let in by ``allow_unsigned``."""
        if self.allow_unsigned and not (folder / SIGNATURE_FILE).exists():
            log.warning("accepting UNSIGNED package %s because %s is set (development only)", label,
                        ENV_ALLOW_UNSIGNED)
            return None
        from orchestrator.delivery.signing import verify_signature  # noqa: PLC0415 - cryptography, when filing

        try:
            return verify_signature(folder, self.trusted_keys, label)
        except PackageRejected as exc:
            if exc.reason.startswith("unsigned"):
                raise PackageRejected(label, f"{exc.reason}; sign it with `orchestrate sign` (or set "
                                             f"{ENV_ALLOW_UNSIGNED}=1 on a development machine)") from None
            raise
