"""What a probe costs: Triton's compute time per sample of each model it passes through, times the probe's
samples, from statistic deltas read at most once per metrics interval; the probe's own round trip until a delta
exists. The helper's executions are of 4 samples, as the probes here."""

from __future__ import annotations

import pytest

from orchestrator.daemons.probe_schedule import ProbeCost
from orchestrator.errors import TritonError
from orchestrator.triton.protocol import ExecutionStats


class Stats:
    """Just the statistics API of a server, set by the test: model -> version -> counters."""

    def __init__(self) -> None:
        self.models: dict[str, dict[int, ExecutionStats]] = {}
        self.reads = 0

    def run(self, model: str, version: int, executions: int, compute_s: float) -> None:
        now = self.models.setdefault(model, {}).get(version, ExecutionStats())
        self.models[model][version] = ExecutionStats(now.executions + executions, now.inferences + 4 * executions,
                                                     now.compute_ns + int(compute_s * 1e9 * executions))

    def execution_stats(self, model: str) -> dict[int, ExecutionStats]:
        self.reads += 1
        if model not in self.models:
            raise TritonError(f"statistics of {model} failed: requested model '{model}' is not available")
        return dict(self.models[model])


def test_the_round_trip_stands_in_until_the_statistics_show_executions() -> None:
    cost, stats = ProbeCost(("m",), every_s=1.0, samples=4), Stats()
    stats.run("m", 1, 0, 0.0)
    assert cost.seconds == 0.0  # nothing known: the first probe is free to run
    cost.probed(0.300, ok=True)  # the first: a new connection, the client's start-up
    assert cost.seconds == 0.0
    cost.probed(0.006, ok=True)
    cost.probed(0.004, ok=True)
    cost.probed(0.005, ok=True)
    cost.probed(2.0, ok=False)  # a timeout says nothing of the cost
    assert cost.seconds == pytest.approx(0.004) and not cost.measured
    cost.measure(stats, 0.0)  # the first read only sets the counters to compare with
    assert cost.seconds == pytest.approx(0.004)
    stats.run("m", 1, 10, 0.002)
    cost.measure(stats, 1.0)
    assert cost.measured and cost.seconds == pytest.approx(0.002)


def test_the_cost_is_an_ewma_of_deltas_read_at_most_once_per_interval() -> None:
    cost, stats = ProbeCost(("m",), every_s=1.0, samples=4), Stats()
    stats.run("m", 1, 1, 0.002)
    cost.measure(stats, 0.0)
    stats.run("m", 1, 10, 0.002)
    cost.measure(stats, 1.0)
    stats.run("m", 1, 10, 0.012)  # the device got slower
    cost.measure(stats, 1.5)  # too soon: not read
    assert stats.reads == 2 and cost.seconds == pytest.approx(0.002)
    cost.measure(stats, 2.0)
    assert cost.seconds == pytest.approx(0.7 * 0.002 + 0.3 * 0.012)
    for second in range(3, 20):
        stats.run("m", 1, 10, 0.012)
        cost.measure(stats, float(second))
    assert cost.seconds == pytest.approx(0.012, rel=0.01)
    cost.measure(stats, 20.0)  # no executions since: the estimate stands
    assert cost.seconds == pytest.approx(0.012, rel=0.01)


def test_the_models_a_probe_passes_through_add_up() -> None:
    """An ensemble: pre-processing, the network, NMS; each executes once per probe."""
    path = ("pre", "net", "nms")
    cost, stats = ProbeCost(path, every_s=1.0, samples=4), Stats()
    for model in path:
        stats.run(model, 1, 1, 0.0)
    cost.measure(stats, 0.0)
    for model, seconds in zip(path, (0.003, 0.025, 0.002), strict=True):
        stats.run(model, 1, 5, seconds)
    cost.measure(stats, 1.0)
    assert cost.seconds == pytest.approx(0.030)


def test_a_version_loaded_again_or_unloaded_adds_nothing_and_a_missing_model_keeps_its_estimate() -> None:
    cost, stats = ProbeCost(("m", "gone"), every_s=1.0, samples=4), Stats()
    stats.run("m", 1, 100, 0.002)
    stats.run("gone", 1, 10, 0.001)
    cost.measure(stats, 0.0)
    stats.run("m", 1, 10, 0.002)
    stats.run("gone", 1, 10, 0.001)
    cost.measure(stats, 1.0)
    assert cost.seconds == pytest.approx(0.003)
    stats.models["m"] = {1: ExecutionStats(5, 20, int(5 * 0.5e9)), 2: ExecutionStats()}  # v1 reloaded: counters anew
    del stats.models["gone"]  # Triton does not answer for it now
    cost.measure(stats, 2.0)
    assert cost.seconds == pytest.approx(0.003)
    stats.run("m", 2, 10, 0.004)  # the new version serving
    cost.measure(stats, 3.0)
    assert cost.per_model["m"] == pytest.approx(0.7 * 0.002 + 0.3 * 0.004)


def test_clients_sending_one_frame_per_request_do_not_make_a_four_frame_probe_look_cheap() -> None:
    cost, stats = ProbeCost(("net",), every_s=1.0, samples=4), Stats()
    stats.models["net"] = {1: ExecutionStats(0, 0, 0)}
    cost.measure(stats, 0.0)
    stats.models["net"] = {1: ExecutionStats(100, 100, int(100 * 0.004e9))}  # 100 single frames, 4 ms each
    cost.measure(stats, 1.0)
    assert cost.seconds == pytest.approx(0.016)  # not 4 ms: the probe sends four frames


def test_the_watchers_own_cpu_for_a_probe_is_added_to_tritons_compute() -> None:
    cost, stats = ProbeCost(("m",), every_s=1.0, samples=4), Stats()
    stats.run("m", 1, 1, 0.001)
    cost.measure(stats, 0.0)
    stats.run("m", 1, 10, 0.001)
    cost.measure(stats, 1.0)
    cost.probed(0.300, ok=True, cpu_s=0.050)  # the first: the client's start-up, left out
    assert cost.seconds == pytest.approx(0.001)
    cost.probed(0.003, ok=True, cpu_s=0.001)
    cost.probed(2.0, ok=False, cpu_s=0.020)  # a timeout's CPU says nothing of a probe's
    assert cost.seconds == pytest.approx(0.002)
    cost.probed(0.003, ok=True, cpu_s=0.002)  # an EWMA, as Triton's side
    assert cost.seconds == pytest.approx(0.001 + 0.7 * 0.001 + 0.3 * 0.002)
