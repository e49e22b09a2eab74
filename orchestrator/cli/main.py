"""``orchestrate``: parse, call one use case, render a table or JSON.

The only place that turns our exceptions into one line on stderr and an exit code.
Data goes to stdout, logs to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.common import State, orchestrator_of, run
from orchestrator.cli.shadow import register as register_shadow_commands
from orchestrator.cli.trust import register as register_trust_commands
from orchestrator.core.versions import label, parse_version
from orchestrator.errors import UsageError

# The use cases (numpy, cryptography, protobuf: cli.common builds them) and the journal's records are
# imported by the commands that use them; `--help` and the other commands do not pay for them.
if TYPE_CHECKING:
    from orchestrator.core.journal import Record
    from orchestrator.usecases.context import SwitchResult
    from orchestrator.usecases.status import ModelStatus

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ship model versions to a running Triton and get the last verified one back.")


@app.callback()
def main(
    ctx: typer.Context,
    repository: Annotated[str | None, typer.Option("--repository", "-r", help="Model repository folder "
                                                   "[env ORCH_REPOSITORY, default ./model_repository]")] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir", help="Journal, policies and golden sets "
                                                  "[env ORCH_STATE_DIR, default orchestrator_state/ beside the "
                                                  "repository]")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Triton HTTP URL [env ORCH_TRITON_URL]")] = None,
    model: Annotated[str | None, typer.Option("--default-model", help="Model used when a command names none "
                                              "[env ORCH_DEFAULT_MODEL]")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a Triton answer")] = 10.0,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait for another command on the model")] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    state = State()
    state.verbose = verbose
    state.options = {"repository": repository, "state_dir": state_dir, "url": url, "default_model": model,
                     "timeout_s": timeout, "lock_timeout_s": lock_timeout}
    ctx.obj = state



def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _switch_line(result: SwitchResult) -> str:
    if not result.changed:
        return f"{result.model}: {label(result.to_version)} already serves; resident {_versions(result.resident)}"
    return (f"{result.model}: {result.action} {label(result.from_version)} -> {label(result.to_version)}: "
            f"{label(result.to_version)} serving after {result.switch_ms:.0f} ms (command {result.duration_ms:.0f} ms);"
            f" resident {_versions(result.resident)}")


def _versions(versions: tuple[int, ...] | list[int]) -> str:
    return ", ".join(label(v) for v in versions) or "none"


@app.command("import")
def import_(ctx: typer.Context, package: Path,
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """File a package (folder or .tar.gz) as the model's next version."""
    result = run(lambda: orchestrator_of(ctx).import_package(package))
    if as_json:
        _print_json({"model": result.model, "version": result.version, "artifacts": result.artifacts})
    else:
        typer.echo(f"{result.model}: filed {label(result.version)} ({len(result.artifacts)} artifacts verified)")


def _model_and_version(first: str, second: str | None) -> tuple[str | None, int]:
    return (first, parse_version(second)) if second is not None else (None, parse_version(first))


@app.command()
def promote(ctx: typer.Context,
            first: Annotated[str, typer.Argument(metavar="[MODEL] VERSION")],
            second: Annotated[str | None, typer.Argument(metavar="", show_default=False)] = None,
            force: Annotated[bool, typer.Option(help="Promote a quarantined version")] = False,
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Verify a version beside production, then make it the served version."""
    model, version = run(lambda: _model_and_version(first, second))
    result = run(lambda: orchestrator_of(ctx).promote(model, version, force=force))
    _print_json(result.__dict__) if as_json else typer.echo(_switch_line(result))


@app.command()
def rollback(ctx: typer.Context,
             model: Annotated[str | None, typer.Argument()] = None,
             to: Annotated[str | None, typer.Option("--to", help="Version to roll back to")] = None,
             force: Annotated[bool, typer.Option(help="Allow a version that is not verified")] = False,
             reason: Annotated[str, typer.Option(help="Recorded in the journal")] = "requested by operator",
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Serve the last verified version again (no load when it is resident)."""
    target = run(lambda: parse_version(to)) if to else None
    result = run(lambda: orchestrator_of(ctx).rollback(model, target, force=force, reason=reason))
    _print_json(result.__dict__) if as_json else typer.echo(_switch_line(result))


@app.command()
def reconcile(ctx: typer.Context, model: Annotated[str | None, typer.Argument()] = None) -> None:
    """Repair interrupted commands and load what the disk says into Triton."""
    notes = run(lambda: orchestrator_of(ctx).reconcile(model))
    typer.echo("\n".join(notes) if notes else "in sync: nothing to do")


def _status_table(status: ModelStatus) -> str:
    if status.in_sync:
        sync = "in sync"
    elif not status.triton_reachable:
        sync = "Triton unreachable" if "unreachable" in status.triton_error else f"Triton: {status.triton_error}"
    else:
        sync = "Triton differs from disk: run `orchestrate reconcile`"
    lines = [f"model {status.model}: serving {label(status.served)}, last verified {label(status.last_verified)}, "
             f"resident {_versions(status.resident)} ({sync})"]
    if status.interrupted:
        lines.append(f"  interrupted: {status.interrupted} (the next command repairs it)")
    lines.append(f"  {'VERSION':<8} {'STATUS':<12} {'RESIDENT':<9} {'TRITON':<12} {'DRIFT':<7} {'CREATED':<26} REASON")
    for row in status.versions:
        marker = "*" if row.version == status.served else " "
        lines.append(f" {marker}{label(row.version):<8} {row.status:<12} {'yes' if row.resident else 'no':<9} "
                     f"{row.triton_state or '-':<12} {row.drift_baseline or '-':<7} {row.created_at[:25]:<26} "
                     f"{row.reason}")
    return "\n".join(lines)


@app.command()
def status(ctx: typer.Context, model: Annotated[str | None, typer.Argument()] = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Served version, resident versions and their Triton state, verified/failed versions."""
    statuses = run(lambda: orchestrator_of(ctx).status(model))
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        typer.echo("\n\n".join(_status_table(s) for s in statuses) or "no models in the repository")


def _history_line(record: Record) -> str:
    span = f"{label(record.from_version)} -> {label(record.to_version)}"
    duration = f"{record.duration_ms:.0f} ms" if record.duration_ms is not None else ""
    return (f"{record.time[:23]:<24} {record.action.value:<10} {record.result.value:<10} {span:<12} "
            f"{duration:>8}  "
            f"{record.actor}  {record.reason}").rstrip()


@app.command()
def history(ctx: typer.Context, model: Annotated[str | None, typer.Argument()] = None,
            limit: Annotated[int, typer.Option(help="Show the last N records (0: all)")] = 0,
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The model's journal, oldest first."""
    from orchestrator.core.journal import Result  # noqa: PLC0415

    journal = run(lambda: orchestrator_of(ctx).history(model))
    finished = {r.op for r in journal.records if r.is_final}
    # One line per operation: its outcome, or its start when it never finished.
    records = [r for r in journal.records if r.is_final or (r.result is Result.STARTED and r.op not in finished)]
    records = records[-limit:] if limit else records
    if as_json:
        _print_json([json.loads(r.to_json()) for r in records])
    else:
        typer.echo(f"{'TIME':<24} {'ACTION':<10} {'RESULT':<10} {'FROM -> TO':<12} {'TOOK':>8}  ACTOR  REASON")
        for record in records:
            typer.echo(_history_line(record))
    if journal.skipped_lines:
        typer.echo(f"warning: skipped {journal.skipped_lines} unreadable journal line(s)", err=True)


def _default_metrics_url(triton_url: str) -> str:
    host = triton_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return f"http://{host}:8002/metrics"


@app.command()
def watch(ctx: typer.Context,
          models: Annotated[list[str] | None, typer.Argument(help="Models to watch (default: all)")] = None,
          metrics_port: Annotated[int, typer.Option(help="Port of the orchestrator's Prometheus exporter")] = 9400,
          metrics_address: Annotated[str, typer.Option(help="Address the exporter listens on")] = "0.0.0.0",
          triton_metrics_url: Annotated[str | None, typer.Option(
              help="Triton's metrics endpoint [env ORCH_TRITON_METRICS_URL, default port 8002 of --url's host]")]
          = None,
          inbox: Annotated[Path | None, typer.Option(help="Folder to file signed .tar.gz packages from")]
          = None,
          trace_dir: Annotated[Path | None, typer.Option(help="Where Triton's trace files appear on this machine, for "
                                                         "drift [default: the server's trace file folder]")]
          = None) -> None:
    """Watch the served versions and roll back to the last verified one on anomalies (until SIGTERM)."""
    from orchestrator.daemons.watch import Watch, serve_metrics  # noqa: PLC0415

    def start() -> Watch:
        orch = orchestrator_of(ctx)
        url = triton_metrics_url or os.environ.get("ORCH_TRITON_METRICS_URL") or \
            _default_metrics_url(orch.settings.triton_url)
        daemon = Watch(orch.settings, models or None, url, inbox=inbox, trace_dir=trace_dir)
        serve_metrics(daemon.registry, metrics_port, metrics_address)
        return daemon

    daemon = run(start)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    typer.echo(f"watching; metrics on {metrics_address}:{metrics_port}/metrics", err=True)
    run(lambda: daemon.run(stop))


@app.command("local-triton")
def local_triton(ctx: typer.Context,
                 port: Annotated[int, typer.Option(help="HTTP port (gRPC and metrics use the next two)")] = 8000,
                 load: Annotated[list[str] | None, typer.Option(help="Model to load at start (all by default)")]
                 = None) -> None:
    """Run the embedded CPU Triton on the repository in the foreground (Ctrl-C stops it)."""
    import tempfile  # noqa: PLC0415

    from orchestrator.settings import read_admin_key  # noqa: PLC0415
    from orchestrator.store.repository import ModelRepository  # noqa: PLC0415 - protobuf, yaml
    from orchestrator.triton.embedded import EmbeddedTriton  # noqa: PLC0415 - needs nvidia-pytriton

    def start() -> EmbeddedTriton:
        repo = Path(ctx.obj.options["repository"] or "model_repository")
        if not repo.is_dir():
            raise UsageError(f"model repository {repo} is not a folder")
        models = tuple(load or ModelRepository(repo, repo.parent / "orchestrator_state").models())
        workdir = Path(tempfile.mkdtemp(prefix="orch-triton-"))
        # With ORCH_ADMIN_KEY(_FILE) set, the control API is locked as on a device.
        return EmbeddedTriton(repo, workdir, models, ports=(port, port + 1, port + 2),
                              admin_key=read_admin_key()).start()

    server = run(start)
    typer.echo(f"Triton ready at {server.url} (metrics {server.metrics_url}); log {server.log_path}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


register_trust_commands(app)
register_shadow_commands(app)


def entrypoint() -> None:
    app()


if __name__ == "__main__":
    entrypoint()
