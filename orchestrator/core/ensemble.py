"""A Triton ensemble as a value: the route clients take to a managed model.

Detectors usually serve as ensembles (pre-processing -> the network -> NMS). Clients call the
ensemble; the versions are the network's. A step with ``model_version: -1`` follows Triton's
default routing (the highest READY version: measured on Triton 2.51, an ensemble follows a version
switch of its step with 0 failed requests), so promoting the network moves the ensemble's traffic
too. A step pinned to a number never follows: such an ensemble is not a route to the model.

Pure: ``store/modelconfig.py`` builds these from config.pbtxt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from orchestrator.core.model import Contract

FOLLOWS_SERVED = -1  # Triton's model_version for "whatever default routing picks"


@dataclass(frozen=True)
class Step:
    model: str
    version: int  # FOLLOWS_SERVED, or a pinned version
    inputs: tuple[tuple[str, str], ...]  # (the step's input tensor, the ensemble tensor feeding it)
    outputs: tuple[tuple[str, str], ...]  # (the step's output tensor, the ensemble tensor it becomes)


@dataclass(frozen=True)
class Ensemble:
    name: str
    steps: tuple[Step, ...]
    contract: Contract
    max_batch_size: int = 0  # 0: the ensemble's tensors have no batch axis

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.contract.outputs]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(step.model for step in self.steps))

    def routes_to(self, model: str) -> bool:
        return any(step.model == model and step.version == FOLLOWS_SERVED for step in self.steps)

    def pinned(self, model: str) -> tuple[int, ...]:
        """Versions of ``model`` a step names by number: they never follow a promote or a rollback."""
        return tuple(step.version for step in self.steps if step.model == model and step.version != FOLLOWS_SERVED)

    def with_model(self, model: str, replacement: str, name: str) -> Ensemble:
        """This ensemble, named ``name``, with every step of ``model`` sent to ``replacement`` (a candidate)."""
        steps = tuple(replace(step, model=replacement) if step.model == model else step for step in self.steps)
        return replace(self, name=name, steps=steps)

    def order(self) -> tuple[Step, ...]:
        """The steps in an order where every step's inputs exist before it runs (Triton runs them by data
        dependency, not by listing order); ValueError when some step can never run."""
        available = {t.name for t in self.contract.inputs}
        pending, ordered = list(self.steps), []
        while pending:
            ready = [s for s in pending if all(source in available for _, source in s.inputs)]
            if not ready:
                missing = sorted({src for s in pending for _, src in s.inputs if src not in available})
                raise ValueError(f"ensemble {self.name}: no step produces {', '.join(missing)}")
            for step in ready:
                ordered.append(step)
                available.update(target for _, target in step.outputs)
                pending.remove(step)
        missing = [name for name in self.output_names if name not in available]
        if missing:
            raise ValueError(f"ensemble {self.name}: no step produces output {', '.join(missing)}")
        return tuple(ordered)


class RouteError(ValueError):
    """Which route a model serves through cannot be told; the message says what to write in policy.yaml."""


def route_of(model: str, ensembles: Iterable[Ensemble], named: str = "") -> Ensemble | None:
    """The ensemble clients reach ``model`` through: the one ``named`` in the policy, else the only ensemble
    whose step follows the model's served version; None when clients call the model itself."""
    candidates = [e for e in ensembles if e.routes_to(model)]
    if named:
        if named == model:
            return None  # the policy says: probe the model itself
        for ensemble in candidates:
            if ensemble.name == named:
                return ensemble
        raise RouteError(f"route {named!r} in {model}'s policy is not an ensemble with a step following {model}'s "
                         f"served version (model_version: -1); ensembles that do: "
                         f"{', '.join(e.name for e in candidates) or 'none'}")
    if len(candidates) > 1:
        raise RouteError(f"{model} serves through several ensembles ({', '.join(e.name for e in candidates)}): "
                         f"name the one to verify and probe as `route:` under promotion in its policy.yaml")
    return candidates[0] if candidates else None
