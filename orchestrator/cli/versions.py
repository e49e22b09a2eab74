"""``orchestrate prune`` and ``label``: the commands about filed versions themselves (not which one serves).

Added to the main application by ``register(app)`` (``cli/main.py`` calls it), like ``cli/trust.py``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import as_json_option, fail, orchestrator_of, run, version_of
from orchestrator.core.versions import label
from orchestrator.errors import UsageError

if TYPE_CHECKING:
    from orchestrator.usecases.prune import PruneResult



@click.command("prune")
@click.argument("model", required=False)
@click.option("--keep", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep the N newest versions besides those always kept [default: the policy's retention "
                   "keep, 3]")
@click.option("--dry-run", is_flag=True, help="Say what would be removed and how many bytes, change nothing")
@as_json_option
@click.pass_context
def prune(ctx: click.Context, model: str | None, keep: int | None, dry_run: bool, as_json: bool) -> None:
    """Remove the folders of old versions, keeping what the model may still need.

    Always kept: the served version, every resident one, the last verified one (the rollback target),
    any version Triton still holds, any an unfinished command names, a version under shadow test or in
    the candidate entry, and the N newest (--keep). Any other version may go, whatever its verification
    (failed and quarantined ones too).

    A pruned version's meta.yaml and the sha256 and size of every removed file stay in
    <state>/MODEL/pruned/N/, its attestation and journal records stay where they are; it can no longer be
    promoted or rolled back to, and its number is never filed again. The watcher prunes on its own when
    policy.yaml has `retention: {enabled: true}`.

    \b
    Example:
      orchestrate prune classifier --keep 2 --dry-run
      orchestrate prune classifier --keep 2
    """
    result = run(lambda: orchestrator_of(ctx).prune(model, keep=keep, dry_run=dry_run))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(prune_lines(result))


def prune_lines(result: PruneResult) -> str:
    verb = "would prune" if result.dry_run else "pruned"
    lines = [f"{result.model}: {verb} {label(p.version)} ({p.status}, {size(p.freed_bytes)})" for p in result.pruned]
    kept = ", ".join(f"{label(k.version)} ({k.describe()})" for k in result.kept) or "none"
    if not result.pruned:
        lines.append(f"{result.model}: nothing to prune (keep {result.keep}); kept {kept}")
    else:
        freed = "would free" if result.dry_run else "freed"
        lines.append(f"{result.model}: {freed} {size(result.freed_bytes)} ({len(result.pruned)} version(s)); "
                     f"kept {kept}")
    if result.dry_run:
        lines.append(f"{result.model}: dry run, nothing changed")
    return "\n".join(lines)


def size(count: int) -> str:
    """Bytes exactly, and in the largest unit that keeps the number readable."""
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{count} bytes" if unit == "B" else f"{count} bytes, {value:.1f} {unit}"


@click.command("label")
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] NAME [VERSION]")
@click.option("--remove", is_flag=True, help="Remove the label NAME (its version may be unloaded at the next switch)")
@as_json_option
@click.pass_context
def label_command(ctx: click.Context, args: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Point a version label (TF Serving's way: canary, ab-control) at a version, or remove it.

    A label points at a version READY in Triton; a verified version below the served one is loaded
    first (as a fallback is) and stays loaded while labelled. `stable` follows the served version:
    promote moves it, rollback moves it back. Every command that takes a version takes a label
    (`rollback --to stable`, `shadow start classifier canary`, `describe classifier canary`). Clients
    that route by version read a label from `orchestrate watch`'s HTTP port:
    GET /api/v1/models/MODEL/labels/NAME.

    \b
    Examples:
      orchestrate label classifier ab-control v2
      orchestrate label classifier ab-control --remove
    """
    wanted = 1 if remove else 2
    if len(args) not in (wanted, wanted + 1):
        shape = "[MODEL] NAME --remove" if remove else "[MODEL] NAME VERSION"
        fail(UsageError(f"expected {shape}, got {len(args)} argument(s)"))
    model = args[0] if len(args) == wanted + 1 else None
    name = args[-1] if remove else args[-2]
    orch = orchestrator_of(ctx)
    if remove:
        was = run(lambda: orch.unlabel(model, name))
        message = f"label {name} removed (was {label(was)})" if was is not None else f"no label {name}: nothing to do"
        click.echo(json.dumps({"label": name, "removed": was}) if as_json else message)
        return
    version = version_of(ctx, model, args[-1])
    labels, loaded = run(lambda: orch.label(model, name, version))
    if as_json:
        click.echo(json.dumps({"label": name, "version": version, "loaded": loaded, "labels": labels}, indent=2))
    else:
        click.echo(f"label {name} -> {label(version)}" + (" (loaded beside the served version)" if loaded else "")
                   + "; labels: " + ", ".join(f"{k} {label(v)}" for k, v in labels.items()))


def register(app: click.Group) -> None:
    app.add_command(prune)
    app.add_command(label_command)
