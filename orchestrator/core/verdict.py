"""One verdict for every judgement: candidate checks, the shadow gate, each watch rule's finding.

"Inconclusive" is a verdict of its own (too few samples, no baseline yet): never a pass.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    # A watch rule's finding reads as "ok" or "breach": the same verdicts under the rules' words.
    OK = "passed"
    BREACH = "failed"

    @property
    def is_final(self) -> bool:
        """Decided: more data of the same kind is not needed."""
        return self is not Outcome.INCONCLUSIVE


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    tensor: str | None = None  # the first failed check's subject, for the operator
    metric: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    @classmethod
    def of(cls, passed: bool, reason: str = "", metrics: dict[str, float] | None = None) -> Verdict:
        return cls(Outcome.PASSED if passed else Outcome.FAILED, reason, metrics=metrics or {})
