"""``orchestrate``: parse, call one use case, render a table or JSON.

The only place that turns our exceptions into one line on stderr and an exit code.
Data goes to stdout, logs to stderr. Built on click: plain help text (no markup to lose),
``--version``, and shell completion (``_ORCHESTRATE_COMPLETE=bash_source orchestrate``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import State, as_json_option, fail, orchestrator_of, run, version_of
from orchestrator.cli.fleet import register as register_fleet_commands
from orchestrator.cli.replay import register as register_replay_commands
from orchestrator.cli.shadow import register as register_shadow_commands
from orchestrator.cli.trust import register as register_trust_commands
from orchestrator.cli.versions import register as register_version_commands
from orchestrator.cli.views import register as register_view_commands
from orchestrator.cli.views import versions_text
from orchestrator.core.versions import label
from orchestrator.errors import UsageError

# The use cases (numpy, cryptography, protobuf: cli.common builds them) and the journal's records are
# imported by the commands that use them; `--help` and the other commands do not pay for them.
if TYPE_CHECKING:
    from orchestrator.usecases.context import SwitchResult

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110, "show_default": True}
PATH = click.Path(path_type=Path)


class _InOrder(click.Group):
    """Lists commands in the order they are defined (the order of a release), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_InOrder, context_settings=CONTEXT,
             help="Ship model versions to a running Triton and get the last verified one back.")
@click.version_option(package_name="triton-orchestrator", prog_name="orchestrate")
@click.option("--repository", "-r", metavar="DIR",
              help="Model repository folder [env ORCH_REPOSITORY, default ./model_repository]")
@click.option("--state-dir", metavar="DIR", help="Journal, policies and golden sets [env ORCH_STATE_DIR, "
              "default orchestrator_state/ beside the repository]")
@click.option("--url", help="Triton HTTP URL [env ORCH_TRITON_URL]")
@click.option("--default-model", "model", metavar="MODEL",
              help="Model used when a command names none [env ORCH_DEFAULT_MODEL]")
@click.option("--timeout", type=float, default=10.0, help="Seconds to wait for a Triton answer")
@click.option("--lock-timeout", type=float, default=30.0, help="Seconds to wait for another command on the model")
@click.option("--verbose", "-v", is_flag=True, help="Log what happens (and a bug's traceback) on stderr")
@click.pass_context
def app(ctx: click.Context, repository: str | None, state_dir: str | None, url: str | None, model: str | None,
        timeout: float, lock_timeout: float, verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    state = State()
    state.verbose = verbose
    state.options = {"repository": repository, "state_dir": state_dir, "url": url, "default_model": model,
                     "timeout_s": timeout, "lock_timeout_s": lock_timeout}
    ctx.obj = state


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _switch_line(result: SwitchResult) -> str:
    if not result.changed:
        return f"{result.model}: {label(result.to_version)} already serves; resident {versions_text(result.resident)}"
    return (f"{result.model}: {result.action} {label(result.from_version)} -> {label(result.to_version)}: "
            f"{label(result.to_version)} serving after {result.switch_ms:.0f} ms (command {result.duration_ms:.0f} ms);"
            f" resident {versions_text(result.resident)}")




@app.command("import")
@click.argument("package", type=PATH)
@as_json_option
@click.pass_context
def import_(ctx: click.Context, package: Path, as_json: bool) -> None:
    """File a package (folder or .tar.gz) as the model's next version.

    The signature over meta.yaml is checked first (keys in <state>/trusted_keys/), then every artifact's
    sha256, the model's contract and the files the backend may load; nothing is filed on any refusal (exit 3).

    \b
    Examples:
      orchestrate import ./classifier-plan-2
      orchestrate import classifier-v7.tar.gz --json
    """
    result = run(lambda: orchestrator_of(ctx).import_package(package))
    if as_json:
        _print_json({"model": result.model, "version": result.version, "artifacts": result.artifacts})
    else:
        click.echo(f"{result.model}: filed {label(result.version)} ({len(result.artifacts)} artifacts verified)")


def _model_and_version(ctx: click.Context, target: tuple[str, ...]) -> tuple[str | None, int]:
    """``[MODEL] VERSION``, the version as a number (``v2``, ``2``) or a label (``canary``)."""
    if len(target) not in (1, 2):
        fail(UsageError(f"expected [MODEL] VERSION, got {len(target)} arguments: {' '.join(target)}"))
    model = target[0] if len(target) == 2 else None
    return model, version_of(ctx, model, target[-1])


def progress_printer(started: float) -> Callable[[str], None]:
    """Each step on stderr with the seconds since the command started: data stays alone on stdout."""
    def show(step: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f} s] {step}", err=True)
    return show


@app.command()
@click.argument("target", nargs=-1, required=True, metavar="[MODEL] VERSION")
@click.option("--force", is_flag=True, help="Promote a quarantined version")
@click.option("--retry", is_flag=True, help="Load a version again although its last load failed")
@click.option("--progress/--no-progress", default=None,
              help="Show each step as it starts [default: on a terminal, unless --json]")
@as_json_option
@click.pass_context
def promote(ctx: click.Context, target: tuple[str, ...], force: bool, retry: bool, progress: bool | None,
            as_json: bool) -> None:
    """Verify a version beside production, then make it the served version.

    Steps: memory check, candidate load, warm-up, golden set (candidate and served), switch. VERSION is
    v<N>, <N> or a label; MODEL may be left out when the repository holds one model.

    \b
    Examples:
      orchestrate promote v2
      orchestrate promote classifier 7 --json
      orchestrate promote classifier v5 --force    # a quarantined version, after you know why
    """
    started = time.monotonic()
    model, version = _model_and_version(ctx, target)
    orch = orchestrator_of(ctx)
    if progress if progress is not None else (sys.stderr.isatty() and not as_json):
        orch.progress = progress_printer(started)
    result = run(lambda: orch.promote(model, version, force=force, retry=retry))
    _print_json(result.__dict__) if as_json else click.echo(_switch_line(result))


@app.command()
@click.argument("model", required=False)
@click.option("--to", metavar="VERSION", help="Version (or label) to roll back to [default: the last verified one]")
@click.option("--force", is_flag=True, help="Allow a version that is not verified")
@click.option("--reason", default="requested by operator", help="Recorded in the journal")
@click.option("--local", is_flag=True, help="Run it in this process even when `orchestrate watch` takes commands")
@as_json_option
@click.pass_context
def rollback(ctx: click.Context, model: str | None, to: str | None, force: bool, reason: str, local: bool,
             as_json: bool) -> None:
    """Serve the last verified version again (no load when it is resident).

    \b
    Examples:
      orchestrate rollback classifier
      orchestrate rollback classifier --to ab-control --reason "line 3 complaints"

    Handed to a running `orchestrate watch` of the same state folder and Triton when there is one (it has
    everything loaded: traffic moves without this process's start-up), else done here."""
    target = version_of(ctx, model, to) if to else None
    answer = None if local else run(lambda: _rollback_by_watcher(ctx.obj, model, target, force, reason))
    if answer is not None:
        result: object = SimpleNamespace(**answer)
    else:
        result = run(lambda: orchestrator_of(ctx).rollback(model, target, force=force, reason=reason))
    _print_json(result.__dict__) if as_json else click.echo(_switch_line(result))  # type: ignore[arg-type]


def _rollback_by_watcher(state: State, model: str | None, to: int | None, force: bool, reason: str
                         ) -> dict[str, object] | None:
    """The watcher's result, or None when no watcher listens (the command then runs here)."""
    from orchestrator.daemons.command_socket import NoDaemon, request_rollback  # noqa: PLC0415

    settings = state.settings()
    try:
        return request_rollback(settings, model, to, force, reason,
                                timeout_s=settings.lock_timeout_s + settings.load_timeout_s)
    except NoDaemon:
        return None


@app.command()
@click.argument("model", required=False)
@click.pass_context
def reconcile(ctx: click.Context, model: str | None) -> None:
    """Repair interrupted commands and load what the disk says into Triton."""
    notes = run(lambda: orchestrator_of(ctx).reconcile(model))
    click.echo("\n".join(notes) if notes else "in sync: nothing to do")


register_view_commands(app)  # status, history, describe: listed after reconcile


@app.command()
@click.argument("model", required=False)
@click.option("--reason", default="", help="Why, for the journal and `status`")
@click.pass_context
def pause(ctx: click.Context, model: str | None, reason: str) -> None:
    """Pause the watcher's automatic rollback of a model: what would roll back is alerted instead
    (journal, webhook, orchestrator_rollback_blocked{reason="paused"}). Rollbacks by hand still work.

    \b
    Example:
      orchestrate pause classifier --reason "line 3 maintenance, camera recalibrating"
    """
    found, made = run(lambda: orchestrator_of(ctx).pause(model, reason))
    what = "paused" if made else "already paused"
    click.echo(f"automatic rollback {what} (by {found.by} at {found.at}){': ' + found.reason if found.reason else ''}")


@app.command()
@click.argument("model", required=False)
@click.pass_context
def resume(ctx: click.Context, model: str | None) -> None:
    """Resume the watcher's automatic rollback of a model paused with `orchestrate pause`."""
    lifted = run(lambda: orchestrator_of(ctx).resume(model))
    click.echo("automatic rollback resumed" if lifted is not None else "not paused: nothing to resume")


def _default_metrics_url(triton_url: str) -> str:
    host = triton_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return f"http://{host}:8002/metrics"


@app.command()
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--metrics-port", type=int, default=9400, help="Port of the orchestrator's Prometheus exporter")
@click.option("--metrics-address", default="127.0.0.1",
              help="Address the exporter listens on (0.0.0.0 for every interface, as in a container)")
@click.option("--triton-metrics-url", metavar="URL", help="Triton's metrics endpoint [env ORCH_TRITON_METRICS_URL, "
              "default port 8002 of --url's host]")
@click.option("--inbox", type=PATH, help="Folder to file signed .tar.gz packages from")
@click.option("--trace-dir", type=PATH, help="Where Triton's trace files appear on this machine, for drift "
              "[default: the server's trace file folder]")
@click.option("--fleet", "fleet", type=PATH, metavar="CONF",
              help="Also run the fleet agent configured in CONF (YAML: device, broker, controller_keys, labels)")
@click.pass_context
def watch(ctx: click.Context, models: tuple[str, ...], metrics_port: int, metrics_address: str,
          triton_metrics_url: str | None, inbox: Path | None, trace_dir: Path | None, fleet: Path | None) -> None:
    """Watch the served versions (all models by default) and roll back to the last verified one on anomalies
    (until SIGTERM).

    Serves Prometheus metrics and the read-only labels API (/api/v1/models/MODEL/labels) on --metrics-port,
    takes `orchestrate rollback` on <state>/orchestrate.sock, and files packages dropped in --inbox.

    \b
    With --fleet CONF the device's fleet agent runs beside the watcher (its own thread): it applies the
    controller's signed desired state through the same import, promote and rollback, and reports over MQTT.

    \b
    Example:
      orchestrate watch --metrics-port 9400 --inbox /srv/orch/inbox
      orchestrate watch --fleet /etc/orchestrator/fleet.yaml
    """
    from orchestrator.daemons.watch import Watch, serve_metrics  # noqa: PLC0415

    agent: Callable[[threading.Event], None] | None = None

    def start() -> Watch:
        nonlocal agent
        if fleet is not None:  # checked before anything starts: a bad file is one line and exit 2
            from orchestrator.fleet.agent_config import load_config  # noqa: PLC0415
            from orchestrator.fleet.agent_runner import build_agent, serve  # noqa: PLC0415

            conf = load_config(fleet)
        orch = orchestrator_of(ctx)
        if fleet is not None:
            device = build_agent(orch.settings, conf.options, conf.controller_keys)
            agent = lambda stop: serve(device, conf.address, stop)  # noqa: E731
        url = triton_metrics_url or os.environ.get("ORCH_TRITON_METRICS_URL") or \
            _default_metrics_url(orch.settings.triton_url)
        daemon = Watch(orch.settings, list(models) or None, url, inbox=inbox, trace_dir=trace_dir)
        serve_metrics(daemon.registry, metrics_port, metrics_address, daemon)
        return daemon

    daemon = run(start)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"watching; metrics on {metrics_address}:{metrics_port}/metrics, labels on "
               f"{metrics_address}:{metrics_port}/api/v1/models/MODEL/labels", err=True)
    fleet_thread = threading.Thread(target=agent, args=(stop,), name="fleet-agent", daemon=True) if agent else None
    if fleet_thread is not None:
        fleet_thread.start()
    try:
        run(lambda: daemon.run(stop))
    finally:
        stop.set()
        if fleet_thread is not None:
            fleet_thread.join(timeout=10.0)


@app.command("local-triton")
@click.option("--port", type=int, default=8000, help="HTTP port (gRPC and metrics use the next two)")
@click.option("--load", multiple=True, metavar="MODEL", help="Model to load at start (repeat; all by default)")
@click.pass_context
def local_triton(ctx: click.Context, port: int, load: tuple[str, ...]) -> None:
    """Run the embedded CPU Triton on the repository in the foreground (Ctrl-C stops it)."""
    import tempfile  # noqa: PLC0415

    from orchestrator.settings import read_admin_key  # noqa: PLC0415
    from orchestrator.store.repository import ModelRepository  # noqa: PLC0415 - protobuf, yaml
    from orchestrator.triton.embedded import EmbeddedTriton  # noqa: PLC0415 - needs nvidia-pytriton

    def start() -> EmbeddedTriton:
        repo = Path(ctx.obj.options["repository"] or "model_repository")
        if not repo.is_dir():
            raise UsageError(f"model repository {repo} is not a folder")
        models = tuple(load or ModelRepository(repo, repo.parent / "orchestrator_state").entries())
        workdir = Path(tempfile.mkdtemp(prefix="orch-triton-"))
        # With ORCH_ADMIN_KEY(_FILE) set, the control API is locked as on a device.
        return EmbeddedTriton(repo, workdir, models, ports=(port, port + 1, port + 2),
                              admin_key=read_admin_key()).start()

    server = run(start)
    click.echo(f"Triton ready at {server.url} (metrics {server.metrics_url}); log {server.log_path}", err=True)
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
register_replay_commands(app)
register_version_commands(app)  # prune
register_fleet_commands(app)


def entrypoint() -> None:
    # One program name whichever way it starts (`orchestrate`, `python -m orchestrator`): help text and the
    # shell completion variable (_ORCHESTRATE_COMPLETE) do not depend on it.
    app.main(prog_name="orchestrate")


if __name__ == "__main__":
    entrypoint()
