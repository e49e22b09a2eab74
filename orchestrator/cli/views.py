"""The read-only commands: ``status`` (once, or ``--watch``ed until healthy), ``history`` and ``describe``.

Each prints a table, a wider table (``-o wide``), JSON or YAML on stdout. ``status`` exits non-zero when
a model is not healthy (Triton unreachable: 9; out of sync or serving a version that is not verified:
14), after printing, so that scripts can wait on it: ``orchestrate status --timeout 120``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.common import fail, orchestrator_of, run, version_of
from orchestrator.core.versions import label
from orchestrator.errors import NotHealthy, RepositoryCorrupt, UsageError

if TYPE_CHECKING:
    from orchestrator.core.journal import Record
    from orchestrator.usecases.status import ModelStatus, ProbeBudget, VersionDescription

OUTPUTS = ("table", "wide", "json", "yaml")


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Same as -o json")(fn)
    return click.option("-o", "--output", type=click.Choice(OUTPUTS), default="table",
                        help="table, wide (more columns), json or yaml")(fn)


def output_of(output: str, as_json: bool) -> str:
    return "json" if as_json else output


def render(data: object, output: str) -> str:
    if output == "yaml":
        import yaml  # noqa: PLC0415

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(data, indent=2, default=str)


def versions_text(versions: tuple[int, ...] | list[int]) -> str:
    return ", ".join(label(v) for v in versions) or "none"


# --- status --------------------------------------------------------------------------------------

def status_table(status: ModelStatus, wide: bool = False) -> str:
    if status.in_sync:
        sync = "in sync"
    elif not status.triton_reachable:
        sync = "Triton unreachable" if "unreachable" in status.triton_error else f"Triton: {status.triton_error}"
    else:
        sync = "Triton differs from disk: run `orchestrate reconcile`"
    serving = label(status.served) + (f" ({status.served_status})" if status.served is not None else "")
    lines = [f"model {status.model}: serving {serving}, fallback {label(status.fallback)}, "
             f"resident {versions_text(status.resident)} ({sync})"]
    if status.route:
        lines.append(f"  clients call {status.route} (ensemble: {' -> '.join(status.route_steps)}), "
                     f"{status.route_state or '?'} in Triton")
    if status.probe_budget is not None:
        lines.append(f"  probe budget  {probe_budget_text(status.probe_budget)}")
    if status.paused:
        lines.append(f"  automatic rollback paused by {status.paused['by']} at {status.paused['at']}: "
                     f"{status.paused['reason'] or 'no reason given'} (`orchestrate resume {status.model}`)")
    if status.interrupted:
        lines.append(f"  interrupted: {status.interrupted} (the next command repairs it)")
    if status.pruned:
        lines.append(f"  pruned: {versions_text(status.pruned)} (artifacts removed; meta.yaml and checksums kept "
                     f"in the state folder's pruned/)")
    if status.journal_behind:
        lines.append(f"  journal behind: {status.journal_behind}")
    if status.journal_damaged_count:
        lines.append(f"  journal damaged: {status.journal_damaged_count} record(s) no longer read (latest: "
                     f"{status.journal_damaged[-1]}); `orchestrate history` lists the rest")
    if status.labels_error:
        lines.append(f"  labels: {status.labels_error}")
    extra = f" {'FILED':<26} {'MEMORY':>9} {'FAILED LOADS':>12}" if wide else ""
    lines.append(f"  {'VERSION':<8} {'STATUS':<12} {'RESIDENT':<9} {'TRITON':<12} {'DRIFT':<7} {'CREATED':<26}"
                 f"{extra} {'LABELS':<14} REASON")
    for row in status.versions:
        marker = "*" if row.version == status.served else " "
        triton = "?" if row.triton_state is None else row.triton_state or "-"
        more = ""
        if wide:
            memory = f"{row.footprint_mb:.0f} MiB" if row.footprint_mb is not None else "-"
            more = f" {row.filed_at[:25] or '-':<26} {memory:>9} {row.load_failures:>12}"
        lines.append(f" {marker}{label(row.version):<8} {row.status:<12} {'yes' if row.resident else 'no':<9} "
                     f"{triton:<12} {row.drift_baseline or '-':<7} {row.created_at[:25] or '-':<26}{more} "
                     f"{','.join(row.labels) or '-':<14} {row.reason}".rstrip())
    return "\n".join(lines)


def probe_budget_text(budget: ProbeBudget) -> str:
    """``20% of device time (bake, 4 min left), then 1%`` or ``1% of device time (steady)``."""
    def share(value: float) -> str:
        return f"{value * 100:g}%" if value else "0% (no probes)"

    among = f", the device's {share(budget.steady_share * budget.sharers)} among {budget.sharers} models" \
        if budget.sharers > 1 else ""
    if budget.phase == "bake":
        left = f"{math.ceil(budget.bake_left_s / 60)} min" if budget.bake_left_s >= 60 else \
            f"{math.ceil(budget.bake_left_s)} s"
        return f"{share(budget.share)} of device time (bake, {left} left), then {share(budget.steady_share)}{among}"
    return f"{share(budget.share)} of device time (steady{among})"


def _show_statuses(statuses: list[ModelStatus], output: str) -> str:
    if output in ("json", "yaml"):
        return render([s.as_dict() for s in statuses], output)
    return "\n\n".join(status_table(s, wide=output == "wide") for s in statuses) or "no models in the repository"


def _health(statuses: list[ModelStatus]) -> NotHealthy | None:
    problems = [f"{s.model}: {p}" for s in statuses for p in s.problems]
    if not problems:
        return None
    codes = [s.triton_exit_code for s in statuses if s.triton_exit_code]
    return NotHealthy("not healthy: " + "; ".join(problems), max(codes) if codes else None)


@click.command()
@click.argument("model", required=False)
@output_options
@click.option("--watch", "-w", is_flag=True,
              help="Print again whenever it changes, every --interval seconds, until interrupted")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait (watching) until every model is healthy: exit 0 then, non-zero once SECONDS pass")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, help="Seconds between looks")
@click.pass_context
def status(ctx: click.Context, model: str | None, output: str, as_json: bool, watch: bool, timeout: float | None,
           interval: float) -> None:
    """Served version, its fallback, resident versions and their Triton state, each version's status.

    Exits 0 when every model is healthy: Triton answers, holds what the disk says, and serves a
    verified version. Otherwise it prints all the same and exits 9 (Triton unreachable or not
    Triton), 8 (Triton refused the admin key) or 14 (out of sync, or serving a version that is
    not verified).

    \b
    Examples:
      orchestrate status
      orchestrate status classifier -o wide
      orchestrate status --watch                 # until Ctrl-C
      orchestrate status --timeout 120 -o json   # in a script: wait for healthy
    """
    output = output_of(output, as_json)
    orch = orchestrator_of(ctx)
    if not watch and timeout is None:
        statuses = run(lambda: orch.status(model))
        click.echo(_show_statuses(statuses, output))
        if (problem := _health(statuses)) is not None:
            fail(problem)
        return
    deadline = time.monotonic() + timeout if timeout is not None else None
    shown, problem = "", None
    try:
        while True:
            statuses = run(lambda: orch.status(model))
            problem = _health(statuses)
            # JSON: one line per change, for a reader that takes a line at a time.
            page = json.dumps([s.as_dict() for s in statuses], default=str) if output == "json" \
                else _show_statuses(statuses, output)
            if page != shown:
                if shown and output in ("table", "wide"):
                    click.echo(f"--- {time.strftime('%H:%M:%S')}")
                click.echo(page)
                shown = page
            if deadline is not None and (problem is None or time.monotonic() >= deadline):
                break
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass  # watching ends on Ctrl-C; the exit code says how the models were at the last look
    if problem is not None:
        if timeout is not None:
            problem.args = (f"after {timeout:g} s, {problem}",)
        fail(problem)


# --- history -------------------------------------------------------------------------------------

def history_line(record: Record, wide: bool = False) -> str:
    span = f"{label(record.from_version)} -> {label(record.to_version)}"
    duration = f"{record.duration_ms:.0f} ms" if record.duration_ms is not None else ""
    op = f" {record.op:<12}" if wide else ""
    return (f"{record.time:<29}{op} {record.action.value:<10} {record.result.value:<10} {span:<12} "
            f"{duration:>8}  {record.actor}  {record.reason}").rstrip()


@click.command()
@click.argument("model", required=False)
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Show the last N records (0: all)")
@output_options
@click.pass_context
def history(ctx: click.Context, model: str | None, limit: int, output: str, as_json: bool) -> None:
    """The model's journal, oldest first: one line per operation (its outcome, or its start when it never
    finished); `-o wide` adds the operation id, json/yaml every field. Times are UTC, with their offset.

    \b
    Examples:
      orchestrate history classifier --limit 20
      orchestrate history classifier -o json | jq '.[] | select(.action == "rollback")'
    """
    from orchestrator.core.journal import Result  # noqa: PLC0415

    output = output_of(output, as_json)
    journal = run(lambda: orchestrator_of(ctx).history(model))
    finished = {r.op for r in journal.records if r.is_final}
    records = [r for r in journal.records if r.is_final or (r.result is Result.STARTED and r.op not in finished)]
    records = records[-limit:] if limit else records
    if output in ("json", "yaml"):
        click.echo(render([json.loads(r.to_json()) for r in records], output))
    else:
        wide = output == "wide"
        op = f" {'OP':<12}" if wide else ""
        click.echo(f"{'TIME':<29}{op} {'ACTION':<10} {'RESULT':<10} {'FROM -> TO':<12} {'TOOK':>8}  ACTOR  REASON")
        for record in records:
            click.echo(history_line(record, wide))
    for problem in journal.problems:
        if problem not in journal.damaged:
            click.echo(f"warning: skipped {problem.describe()}", err=True)
    if journal.damaged:
        places = "; ".join(p.describe() for p in journal.damaged)
        fail(RepositoryCorrupt(f"the journal has {len(journal.damaged)} damaged record(s), shown records "
                                    f"skip them: {places}"))


# --- describe ------------------------------------------------------------------------------------

def describe_text(d: VersionDescription) -> str:
    role = "serving" if d.serving else "fallback" if d.fallback else "resident" if d.resident else "filed"
    triton = "unreachable" if d.triton_state is None else d.triton_state or "not loaded"
    verification = d.attestation.get("verification") or {}
    labels = f", labels {', '.join(d.labels)}" if d.labels else ""
    lines = [f"{d.model} {label(d.version)}: {d.status}, {role}, Triton {triton}{labels}"]
    if verification.get("verified_by") or verification.get("reason"):
        lines.append(f"  verification: {verification.get('verified_by') or '-'} at "
                     f"{verification.get('verified_at') or '-'}: {verification.get('reason') or ''}".rstrip(": "))
    for name, value in sorted((verification.get("golden") or {}).items()):
        lines.append(f"  golden {name}: {value:g}" if isinstance(value, int | float) else f"  golden {name}: {value}")
    meta = d.meta
    lines.append(f"  created {meta.get('created_at') or '-'}, filed {d.attestation.get('filed_at') or '-'}, "
                 f"source {meta.get('source') or '-'}, device {meta.get('target_device') or '-'}")
    for key, value in sorted((meta.get("framework") or {}).items()):
        lines.append(f"  framework {key}: {value}")
    for name, digest in sorted((meta.get("artifacts") or {}).items()):
        lines.append(f"  artifact {name}: sha256 {digest}")
    footprint = d.attestation.get("footprint_bytes")
    if footprint:
        lines.append(f"  memory at load: {int(footprint) / 2**20:.0f} MiB")
    if d.attestation.get("load_failures"):
        lines.append(f"  failed loads since the last good one: {d.attestation['load_failures']} (promote --retry)")
    shadow = d.attestation.get("shadow")
    if shadow:
        lines.append(f"  shadow: {json.dumps(shadow, default=str, sort_keys=True)}")
    lines.append(f"  journal ({len(d.journal)} records naming {label(d.version)}):")
    for record in d.journal:
        span = f"{label(record.get('from'))} -> {label(record.get('to'))}"
        lines.append(f"    {record['time']} {record['action']:<9} {record['result']:<9} {span:<12} "
                     f"{record.get('actor', '')}  {record.get('reason', '')}".rstrip())
    return "\n".join(lines)


@click.command()
@click.argument("target", nargs=-1, metavar="[MODEL] VERSION")
@output_options
@click.pass_context
def describe(ctx: click.Context, target: tuple[str, ...], output: str, as_json: bool) -> None:
    """One version: its status and role, meta.yaml, the orchestrator's attestation (verification, golden
    metrics, shadow report, memory, failed loads) and every journal record that names it.

    \b
    Example:
      orchestrate describe classifier v2 -o yaml
    """
    if len(target) not in (1, 2):
        fail(UsageError(f"expected [MODEL] VERSION, got {len(target)} arguments"))
    model = target[0] if len(target) == 2 else None
    version = version_of(ctx, model, target[-1])
    output = output_of(output, as_json)
    found = run(lambda: orchestrator_of(ctx).describe(model, version))
    click.echo(render(found.as_dict(), output) if output in ("json", "yaml") else describe_text(found))


def register(app: click.Group) -> None:
    for command in (status, history, describe):
        app.add_command(command)
