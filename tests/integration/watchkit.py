"""Running the watch daemon in a test: its policy, the daemon in a thread, and what it did."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from orchestrator.core.journal import Record
from orchestrator.daemons.watch import Watch

from .conftest import MODEL, Stack

# Short windows so a test takes seconds; the rules themselves are the shipped ones.
TEST_WATCH: dict[str, Any] = {"grace_s": 1.0, "metrics_interval_s": 0.5,
                              "rules": {"latency": {"min_requests": 10}, "error_rate": {"min_requests": 10}}}


def set_watch_policy(stack: Stack, watch: dict[str, Any], model: str = MODEL) -> None:
    path = stack.state / model / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["watch"] = watch
    path.write_text(yaml.safe_dump(policy))


@contextmanager
def watching(stack: Stack, watch: dict[str, Any] | None = None, trace_dir: Path | None = None, model: str = MODEL,
             models: list[str] | None = None) -> Iterator[Watch]:
    """The daemon in a thread over ``models`` (None: every managed model), ``model``'s watch policy set."""
    set_watch_policy(stack, TEST_WATCH if watch is None else watch, model)
    daemon = Watch(stack.settings(), models, stack.server.metrics_url, CollectorRegistry(), trace_dir=trace_dir)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "watch did not stop"


def wait_for(predicate: Callable[[], object], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def watch_rollbacks(stack: Stack) -> list[Record]:
    return [r for r in stack.store().journal.read().records
            if r.action == "rollback" and r.result == "succeeded" and r.actor == "watch"]


def sample_value(daemon: Watch, name: str, **labels: str) -> float:
    return daemon.registry.get_sample_value(name, labels) or 0.0
