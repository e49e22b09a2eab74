"""What every command shares: the one place errors become one line and an exit code, and the
orchestrator built from the global options.

Importing this (and the other ``orchestrator.cli`` modules) stays cheap: the use cases, numpy,
tritonclient and cryptography are imported by the commands that run them, never for ``--help``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from orchestrator.errors import UNEXPECTED_EXIT, Interrupted, OrchestratorError, WriteFailed

if TYPE_CHECKING:
    from orchestrator.settings import Settings
    from orchestrator.usecases.orchestrator import Orchestrator

T = TypeVar("T")
log = logging.getLogger("orchestrator")

as_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table")


class State:
    """The global options, kept on click's context for the command that runs."""

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self.verbose = False
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        """Read from the options and the environment once per command."""
        if self._settings is None:
            from orchestrator.settings import from_environment  # noqa: PLC0415

            self._settings = from_environment(**self.options)
        return self._settings

    def orchestrator(self) -> Orchestrator:
        from orchestrator.usecases.orchestrator import Orchestrator  # noqa: PLC0415 - numpy, cryptography, protobuf

        return Orchestrator(self.settings())


def run(fn: Callable[[], T]) -> T:
    """Call ``fn``; any error ends the command with one line on stderr and its exit code."""
    try:
        try:
            return fn()
        except OSError as exc:  # disk full, read-only file system, I/O error: nothing half-written is kept
            raise WriteFailed(exc) from exc
        except KeyboardInterrupt:
            raise Interrupted() from None
    except OrchestratorError as exc:
        click.echo("error: " + " ".join(str(exc).split()), err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    except (click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:  # a bug: say so in one line; --verbose shows where
        log.info("unexpected error", exc_info=True)  # shown with --verbose
        click.echo(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} (a bug; rerun with "
                   f"--verbose for the traceback)", err=True)
        raise click.exceptions.Exit(UNEXPECTED_EXIT) from None


def fail(error: OrchestratorError) -> NoReturn:
    """End the command with ``error``, as ``run`` does: bad arguments found by the command itself, or a
    verdict found after its output was printed (`status`'s health, `history`'s damaged records)."""
    def raise_it() -> None:
        raise error
    run(raise_it)
    raise error  # not reached: run ends the command for every OrchestratorError


def orchestrator_of(ctx: click.Context) -> Orchestrator:
    return run(ctx.obj.orchestrator)


def version_of(ctx: click.Context, model: str | None, text: str) -> int:
    """A version as typed: ``v2`` or ``2`` without building anything, else one of the model's labels."""
    from orchestrator.core.versions import parse_version  # noqa: PLC0415

    try:
        return parse_version(text)
    except OrchestratorError:
        return run(lambda: orchestrator_of(ctx).resolve_version(model, text))
