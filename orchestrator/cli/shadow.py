"""``orchestrate shadow start|status|report|stop``: compare a candidate with production on live traffic.

Added to the main application by ``register(app)`` (``cli/main.py`` calls it), like ``cli/trust.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import as_json_option, orchestrator_of, run, version_of
from orchestrator.core.versions import label
from orchestrator.errors import ShadowFailed

if TYPE_CHECKING:  # numpy (shadow_stats) and the use cases: imported by the command that runs
    from orchestrator.core.shadow_stats import ShadowReport
    from orchestrator.store.shadow_state import ShadowState

# usecases.shadow's default, repeated so that `--help` imports no use case (tests/unit/test_cli_startup.py
# checks they agree).
DEFAULT_SAMPLE_RATE = 0.001

PATH = click.Path(path_type=Path)


@click.group("shadow", help="Replay sampled production requests to a candidate version.")
def shadow_app() -> None:
    pass


@shadow_app.command("start")
@click.argument("model")
@click.argument("version")
@click.option("--sample-rate", type=float, default=DEFAULT_SAMPLE_RATE, help="Share of production requests replayed")
@click.option("--min-samples", type=int, help="Compared requests needed for a verdict "
              "[default: the policy's shadow.min_samples]")
@click.option("--trace-dir", type=PATH, help="Where Triton's trace files appear on this machine "
              "[default: the server's trace file folder]")
@click.option("--replay-timeout", type=float, default=2.0, help="Seconds the candidate may take per request")
@click.option("--queue-size", type=int, default=64, help="Samples waiting for the candidate before drops")
@click.option("--metrics-port", type=int, help="Serve the run's Prometheus metrics here")
@click.pass_context
def start(ctx: click.Context, model: str, version: str, sample_rate: float, min_samples: int | None,
          trace_dir: Path | None, replay_timeout: float, queue_size: int, metrics_port: int | None) -> None:
    """Load VERSION (v2, 2 or a label) as <model>__candidate and start replaying sampled production requests to it."""
    from orchestrator.usecases.shadow import start_shadow  # noqa: PLC0415

    number = version_of(ctx, model, version)  # v2, 2, or a label (canary)
    orch = orchestrator_of(ctx)
    run(lambda: start_shadow(orch, model, number, sample_rate, min_samples, trace_dir,
                              replay_timeout_s=replay_timeout, queue_size=queue_size, metrics_port=metrics_port))
    click.echo(f"{model}: shadowing {label(number)} at sample rate {sample_rate:g}; "
               f"`orchestrate shadow stop {model}` ends it")


@shadow_app.command("status")
@click.argument("model")
@as_json_option
@click.pass_context
def status(ctx: click.Context, model: str, as_json: bool) -> None:
    """Phase of the model's shadow run, and how many requests were compared or dropped."""
    from orchestrator.core.shadow_stats import ShadowPhase  # noqa: PLC0415
    from orchestrator.usecases.shadow import shadow_status  # noqa: PLC0415

    state = run(lambda: shadow_status(orchestrator_of(ctx), model))
    report = state.shadow_report()
    if as_json:
        click.echo(json.dumps({"model": model, "version": state.config.version, "phase": state.phase.value,
                               "reason": state.reason, "pid": state.pid, "compared": report.compared,
                               "dropped": report.dropped, "candidate_errors": report.candidate_errors}, indent=2))
        return
    line = (f"{model}: shadow of v{state.config.version} {state.phase.value}; {report.compared} compared, "
            f"{report.dropped} dropped, {report.candidate_errors} candidate errors")
    click.echo(line + (f"; {state.reason}" if state.reason else ""))
    if state.phase == ShadowPhase.FAILED:
        run(lambda: _fail(model, state.config.version, state.reason))


@shadow_app.command("report")
@click.argument("model")
@as_json_option
@click.pass_context
def report_(ctx: click.Context, model: str, as_json: bool) -> None:
    """Divergence per output tensor, latency side by side, and the gate's verdict under the policy."""
    from orchestrator.core.shadow_gate import shadow_gate  # noqa: PLC0415
    from orchestrator.store.policyfile import read_policies  # noqa: PLC0415
    from orchestrator.usecases.shadow import shadow_status  # noqa: PLC0415

    orch = orchestrator_of(ctx)
    state = run(lambda: shadow_status(orch, model))
    report = state.shadow_report()
    policy = run(lambda: read_policies(orch.repository.model(model).state).shadow)
    if state.config.min_samples is not None:
        policy = replace(policy, min_samples=state.config.min_samples)
    verdict = shadow_gate(report, policy)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "phase": state.phase.value, "latency_ratio": report.latency_ratio(),
                               "verdict": {"outcome": verdict.outcome.value, "reason": verdict.reason,
                                           "tensor": verdict.tensor, "metric": verdict.metric}}, indent=2))
        return
    click.echo(render_report(state, report))
    click.echo(f"verdict: {verdict.outcome.value}: {verdict.reason}")


def render_report(state: ShadowState, report: ShadowReport) -> str:
    lines = [f"{report.model} v{report.version}: {state.phase.value}; {report.compared} compared of {report.sampled} "
             f"sampled, {report.dropped} dropped, {report.candidate_errors} candidate errors, queue peak "
             f"{report.queue_high_water}"]
    if report.served_versions:
        lines.append("production answered by " + ", ".join(f"v{v} ({n})" for v, n in report.served_versions.items()))
    if report.detection is not None:
        lines += _detection_lines(report)
    if report.tensors or report.detection is None:
        lines.append(f"{'tensor':<16}{'rows':>8}{'mean|d|':>11}{'max|d|':>11}{'rel':>10}{'cosine':>9}{'top1':>7}"
                     f"{'NaN/Inf':>9}")
    for name, t in sorted(report.tensors.items()):
        top1 = "-" if t.top1_agreement is None else f"{t.top1_agreement:.3f}"
        lines.append(f"{name:<16}{t.samples:>8}{t.mean_abs_diff:>11.3g}{t.max_abs_diff:>11.3g}{t.mean_rel_diff:>10.3g}"
                     f"{t.mean_cosine:>9.4f}{top1:>7}{t.candidate_nan + t.candidate_inf:>9}")
    served, cand = report.served_latency, report.candidate_latency
    ratio = report.latency_ratio()
    lines.append(f"latency ms   served p50 {served.p50_ms:.2f} p99 {served.p99_ms:.2f} mean {served.mean_ms:.2f} | "
                 f"candidate replay p50 {cand.p50_ms:.2f} p99 {cand.p99_ms:.2f}, in Triton mean "
                 f"{report.candidate_server_mean_ms or 0:.2f} | ratio {'-' if ratio is None else f'{ratio:.2f}'}")
    return "\n".join(lines)


def _detection_lines(report: ShadowReport) -> list[str]:
    d = report.detection
    assert d is not None

    def shares(values: dict[int, float]) -> str:
        return " ".join(f"{cls}:{share:.2f}" for cls, share in values.items()) or "-"

    return [f"detections   {d.frames} frames, {d.matched_share:.3f} of boxes matched (IoU 0.5, same class), "
            f"count diff {d.count_diff:.2f}/frame, {d.undecodable} undecodable",
            f"{'':<13}per frame candidate {d.candidate_per_frame:.2f} production {d.served_per_frame:.2f}; "
            f"NaN/Inf boxes candidate {d.candidate_nonfinite} production {d.served_nonfinite}",
            f"{'':<13}class shares candidate {shares(d.candidate_class_shares)} | production "
            f"{shares(d.served_class_shares)}"]


@shadow_app.command("stop")
@click.argument("model")
@as_json_option
@click.pass_context
def stop(ctx: click.Context, model: str, as_json: bool) -> None:
    """Stop the worker, turn tracing off, unload the candidate, record the verdict."""
    from orchestrator.usecases.shadow import stop_shadow  # noqa: PLC0415

    result = run(lambda: stop_shadow(orchestrator_of(ctx), model))
    v = result.verdict
    if as_json:
        click.echo(json.dumps({"model": model, "version": result.state.config.version, "outcome": v.outcome.value,
                               "reason": v.reason, "tensor": v.tensor, "metric": v.metric,
                               "report": result.report.to_dict()}, indent=2))
    else:
        click.echo(render_report(result.state, result.report))
        click.echo(f"verdict: {v.outcome.value}: {v.reason}")
    if not v.passed:
        run(lambda: _fail(model, result.state.config.version, v.reason))


def _fail(model: str, version: int, reason: str) -> None:
    raise ShadowFailed(model, version, reason)


def register(app: click.Group) -> None:
    """Add the ``shadow`` command group to ``app``."""
    app.add_command(shadow_app)
