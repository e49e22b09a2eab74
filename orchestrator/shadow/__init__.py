"""Shadow traffic: production requests replayed to a candidate version and compared.

Triton's tensor tracing samples production requests with no change to clients; a worker
tails the trace files, replays the inputs to ``<model>__candidate`` and compares its
outputs with what production served (``stats``), ``gate`` judges the result against the
``shadow:`` policy, and ``session`` holds the start / status / stop use cases.
"""

from orchestrator.shadow.gate import (
    GateVerdict,
    Outcome,
    ShadowPolicy,
    load_shadow_policy,
    require_passed_shadow,
    shadow_gate,
)
from orchestrator.shadow.stats import ShadowReport

__all__ = ["GateVerdict", "Outcome", "ShadowPolicy", "ShadowReport", "load_shadow_policy", "require_passed_shadow",
           "shadow_gate"]
