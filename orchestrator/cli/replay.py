"""``orchestrate replay status|enable|disable|clear``: the ring of recorded production inputs.

The ring holds real client inputs (production data) in ``<state>/<model>/replay/``; promote
replays them to the candidate and the served version (``usecases/replay.py``). Added to the
main application by ``register(app)``, like ``cli/shadow.py``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import as_json_option, orchestrator_of, run

if TYPE_CHECKING:  # the use case (numpy): imported by the command that runs
    from orchestrator.usecases.replay import ReplayStatus


@click.group("replay", help="Record production inputs (production data: off by default) for promote to replay.")
def replay_app() -> None:
    pass


def _when(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


def _as_dict(status: ReplayStatus) -> dict[str, object]:
    return {"model": status.model, "recording": status.recording, "source": status.source or None,
            "folder": str(status.folder), "records": status.ring.records, "bytes": status.ring.bytes,
            "max_bytes": status.max_bytes, "every_n": status.every_n, "oldest": _when(status.ring.oldest),
            "newest": _when(status.ring.newest), "note": status.note}


def _line(status: ReplayStatus) -> str:
    ring = status.ring
    if status.recording:
        head = (f"{status.model}: recording ({status.source}, 1 request in {status.every_n}, bound "
                f"{(status.max_bytes or 0) / 2**20:.1f} MiB)")
    else:
        head = f"{status.model}: not recording"
    held = f"{ring.records} records, {ring.bytes / 2**20:.2f} MiB in {status.folder}"
    if ring.records:
        held += f" (oldest {_when(ring.oldest)}, newest {_when(ring.newest)})"
    return f"{head}; {held}" + (f"; {status.note}" if status.note else "")


def _show(status: ReplayStatus, as_json: bool) -> None:
    click.echo(json.dumps(_as_dict(status), indent=2) if as_json else _line(status))


@replay_app.command("status")
@click.argument("model")
@as_json_option
@click.pass_context
def status(ctx: click.Context, model: str, as_json: bool) -> None:
    """Records, bytes, bound, oldest and newest record, and what records them.

    \b
    Example:
      orchestrate replay status detector --json
    """
    from orchestrator.usecases.replay import replay_status  # noqa: PLC0415

    _show(run(lambda: replay_status(orchestrator_of(ctx), model)), as_json)


@replay_app.command("enable")
@click.argument("model")
@click.option("--max-mb", type=float, help="The ring's bound in MiB [default: the policy's replay.max_mb]")
@click.option("--every", type=int, help="Keep 1 request in N [default: the policy's replay.every_n]")
@as_json_option
@click.pass_context
def enable(ctx: click.Context, model: str, max_mb: float | None, every: int | None, as_json: bool) -> None:
    """Start recording what clients send to MODEL: PRODUCTION DATA, kept in the state folder.

    Behind an ensemble: its first step records (its config.pbtxt is written, journaled and the step
    reloaded). A model clients call directly records from the drift sampler's traces: its policy.yaml
    turns that on (replay.enabled, drift.samples_per_s), and this command says so (exit 2).

    \b
    Example:
      orchestrate replay enable detector --max-mb 32 --every 50
    """
    from orchestrator.usecases.replay import enable_replay  # noqa: PLC0415

    _show(run(lambda: enable_replay(orchestrator_of(ctx), model, max_mb, every)), as_json)


@replay_app.command("disable")
@click.argument("model")
@as_json_option
@click.pass_context
def disable(ctx: click.Context, model: str, as_json: bool) -> None:
    """Stop recording (what was recorded stays until `orchestrate replay clear`)."""
    from orchestrator.usecases.replay import disable_replay  # noqa: PLC0415

    _show(run(lambda: disable_replay(orchestrator_of(ctx), model)), as_json)


@replay_app.command("clear")
@click.argument("model")
@as_json_option
@click.pass_context
def clear(ctx: click.Context, model: str, as_json: bool) -> None:
    """Delete every recorded input of MODEL (journaled)."""
    from orchestrator.usecases.replay import clear_replay  # noqa: PLC0415

    after, records, freed = run(lambda: clear_replay(orchestrator_of(ctx), model))
    if as_json:
        click.echo(json.dumps({**_as_dict(after), "cleared": records, "cleared_bytes": freed}, indent=2))
    else:
        click.echo(f"{model}: deleted {records} recorded inputs ({freed / 2**20:.2f} MiB)")


def register(app: click.Group) -> None:
    """Add the ``replay`` command group to ``app``."""
    app.add_command(replay_app)
