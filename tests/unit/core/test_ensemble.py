"""The ensemble as a value: which route reaches a model, the order its steps run in, a candidate's copy."""

from __future__ import annotations

import pytest

from orchestrator.core.ensemble import FOLLOWS_SERVED, Ensemble, RouteError, Step, route_of
from orchestrator.core.model import Contract, TensorSpec

IMAGE = TensorSpec("IMAGE", "UINT8", (64, 64, 3))
BOXES = TensorSpec("BOXES", "FP32", (32, 4))


def pipeline(name: str = "detection", version: int = FOLLOWS_SERVED, listed_backwards: bool = False) -> Ensemble:
    steps = (
        Step("detector_pre", FOLLOWS_SERVED, (("IMAGE", "IMAGE"),), (("INPUT", "tensor"),)),
        Step("detector", version, (("INPUT", "tensor"),), (("RAW", "raw"),)),
        Step("detector_nms", FOLLOWS_SERVED, (("RAW", "raw"),), (("BOXES", "BOXES"),)),
    )
    return Ensemble(name, steps[::-1] if listed_backwards else steps, Contract((IMAGE,), (BOXES,)))


def test_a_step_following_the_served_version_is_a_route_and_a_pinned_one_is_not() -> None:
    assert pipeline().routes_to("detector")
    pinned = pipeline(version=3)
    assert not pinned.routes_to("detector")
    assert pinned.pinned("detector") == (3,)
    assert not pipeline().routes_to("classifier")


def test_steps_run_in_data_order_whatever_order_they_are_listed_in() -> None:
    assert [s.model for s in pipeline(listed_backwards=True).order()] == ["detector_pre", "detector", "detector_nms"]


def test_an_ensemble_whose_step_needs_a_tensor_nobody_produces_is_refused() -> None:
    broken = Ensemble("detection", (Step("detector", -1, (("INPUT", "nowhere"),), (("RAW", "BOXES"),)),),
                      Contract((IMAGE,), (BOXES,)))
    with pytest.raises(ValueError, match=r"no step produces nowhere"):
        broken.order()
    silent = Ensemble("detection", (Step("detector", -1, (("INPUT", "IMAGE"),), (("RAW", "raw"),)),),
                      Contract((IMAGE,), (BOXES,)))
    with pytest.raises(ValueError, match=r"no step produces output BOXES"):
        silent.order()


def test_the_candidate_copy_sends_only_the_model_s_steps_to_the_candidate_entry() -> None:
    copy = pipeline().with_model("detector", "detector__candidate", "detection__candidate")
    assert copy.name == "detection__candidate"
    assert [s.model for s in copy.steps] == ["detector_pre", "detector__candidate", "detector_nms"]
    assert copy.contract == pipeline().contract


def test_route_of_finds_the_one_ensemble_and_none_for_a_model_called_directly() -> None:
    assert route_of("detector", [pipeline(), pipeline("other", version=2)]) == pipeline()
    assert route_of("classifier", [pipeline()]) is None
    assert route_of("detector", []) is None


def test_two_routes_need_the_policy_to_name_one() -> None:
    both = [pipeline("detection"), pipeline("detection_hd")]
    with pytest.raises(RouteError, match=r"several ensembles .*detection, detection_hd.*route:"):
        route_of("detector", both)
    assert route_of("detector", both, named="detection_hd") == pipeline("detection_hd")
    assert route_of("detector", both, named="detector") is None  # probe the model itself


def test_a_named_route_that_does_not_follow_the_model_is_refused() -> None:
    with pytest.raises(RouteError, match=r"'missing'.*ensembles that do: detection"):
        route_of("detector", [pipeline()], named="missing")
    with pytest.raises(RouteError, match=r"ensembles that do: none"):
        route_of("detector", [pipeline(version=2)], named="detection")
