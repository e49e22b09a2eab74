"""The candidate entry's life in Triton: ``<model>__candidate`` unloaded and its folder removed.

Apart from ``candidate.py`` (the checks, numpy) because repair and shadow need only this.
"""

from __future__ import annotations

import logging

from orchestrator.errors import TritonError, TritonUnreachable
from orchestrator.store.repository import ModelStore, candidate_name
from orchestrator.usecases.context import Context

log = logging.getLogger(__name__)


def drop_candidate(ctx: Context, store: ModelStore, quiet: bool = False, wait: bool = True) -> None:
    """Unload the candidate entry (and the candidate routes through it, first) and remove their folders;
    ``wait``: first until Triton has let go of the entry."""
    entry = candidate_name(store.name)
    for route in store.candidate_routes():
        try:
            ctx.triton.unload(route)
        except TritonError as exc:
            if not quiet:
                log.warning("could not unload %s: %s", route, exc)
    store.remove_candidate_routes()
    try:
        ctx.triton.unload(entry)
        if wait:
            await_previous(ctx, entry)
    except TritonError as exc:
        if not quiet:
            log.warning("could not unload %s: %s", entry, exc)
    store.remove_candidate_entry()


def await_previous(ctx: Context, entry: str) -> None:
    try:
        if not ctx.triton.wait_unloaded(entry, None, ctx.settings.timeout_s):
            log.warning("%s still unloading after %.0fs", entry, ctx.settings.timeout_s)
    except TritonUnreachable:
        pass  # the load that follows says so
