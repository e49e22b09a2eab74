"""The metrics and labels that PromQL in docker/ names, for test_compose (alert rules) and test_dashboard (Grafana).

Names come from a real parse (``promql-parser``, in the ``test`` extra) and are checked against the
exporters' own registries, not a list kept by hand. A Grafana query is PromQL only once its
variables are replaced: ``grafana_promql`` does that the way Grafana would, with values that parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client import CollectorRegistry

from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.shadow_metrics import ShadowMetrics
from orchestrator.fleet.metrics import ControllerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "triton-orchestrator.json"


def _series_names(register: Callable[[CollectorRegistry], object]) -> set[str]:
    registry = CollectorRegistry()
    register(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names


# The watcher's series (`orchestrate watch --metrics-port`), a shadow run's (its own port) and the fleet
# controller's (`orchestrate fleet serve`, its configuration's metrics port).
WATCH_METRICS = _series_names(WatchMetrics)
SHADOW_METRICS = _series_names(ShadowMetrics)
FLEET_METRICS = _series_names(ControllerMetrics)


def exported_metric_names() -> set[str]:
    """Every series name the orchestrator's exporters can emit (the real ones, not a list kept by hand)."""
    return WATCH_METRICS | SHADOW_METRICS | FLEET_METRICS


# The orchestrator's metrics (the interface of `orchestrate watch`), Prometheus' own `up`,
# and the Triton metrics the files in docker/ use (test_compose finds them on a real server).
ORCHESTRATOR_METRICS = exported_metric_names()
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                  "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                  "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                  "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count"}
KNOWN_METRICS = ORCHESTRATOR_METRICS | TRITON_METRICS | {"up"}


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every series selector of an expression, from a real PromQL parse (raises ValueError on a syntax error)."""
    found: list[promql_parser.VectorSelector] = []
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects (raises ValueError on a syntax error)."""
    return {selector.name for selector in selectors(expr)}


# --- Grafana ---------------------------------------------------------------------------------

# Grafana's own variables, with values of the kind it puts there.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "6h", "__auto": "30s",
                    "__interval_ms": "30000", "__range_s": "21600", "__range_ms": "21600000"}
# $name, ${name}, ${name:format} and the deprecated [[name]].
_GRAFANA_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::\w+)?\]\]")


def variable_value(name: str) -> str:
    """What a multi-value dashboard variable becomes in a Prometheus query: Grafana joins the chosen
    values into a regex group. Distinct per variable, so a matcher shows which variable it holds."""
    return f"({name}-a|{name}-b)"


def grafana_promql(expr: str, variables: set[str]) -> str:
    """A Grafana query as the PromQL Prometheus receives; a variable the dashboard does not define is an error."""
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in variables:
            raise KeyError(f"${name} is no variable of the dashboard")
        return variable_value(name)

    return _GRAFANA_VARIABLE.sub(value, expr)


@dataclass(frozen=True)
class Query:
    where: str  # "panel 'Served version' A", "annotation 'Rollbacks'", "variable model"
    expr: str  # as the dashboard holds it, variables and all
    labels_shown: tuple[str, ...] = ()  # the {{label}}s of its legend or annotation text


_TEMPLATE_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.S)


def _shown(*templates: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(label for text in templates for label in _TEMPLATE_LABEL.findall(text or "")))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL query of a dashboard: its panels' targets, its annotations, its query variables' selectors."""
    queries = [Query(f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"],
                     _shown(target.get("legendFormat", "")))
               for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or annotation.get("target", {}).get("expr")
        if expr is not None:
            queries.append(Query(f"annotation {annotation.get('name')!r}", expr,
                                 _shown(annotation.get("titleFormat", ""), annotation.get("textFormat", ""),
                                        *(annotation.get("tagKeys") or "").split(","))))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
            match = _LABEL_VALUES.match(query.strip())
            assert match, f"variable {variable['name']}: {query!r} is no label_values(selector, label)"
            queries.append(Query(f"variable {variable['name']}", match["selector"], (match["label"],)))
    return queries


def dashboard_variables(dashboard: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in dashboard.get("templating", {}).get("list", [])}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    variables = dashboard_variables(dashboard)
    return {name for query in dashboard_queries(dashboard) for name in metric_names(grafana_promql(query.expr,
                                                                                                    variables))}
