"""docker/grafana/dashboards/triton-orchestrator.json travels: provisioned by the compose stack or imported into
a Grafana the operator already runs, over one device or many.

No Grafana runs here, so the file is checked statically against what Grafana does with it, and against the
real exporter: every query parses as PromQL once Grafana's variables are in, selects series the exporters
emit (real ``WatchMetrics``, ``ShadowMetrics`` and ``ControllerMetrics`` registries, through
``generate_latest``) and filters on the dashboard's variables; no panel names a data source uid.
``problems`` is the whole check; the last tests show that it catches a broken dashboard.

What Grafana does with the file, and why it is written as it is:
- Provisioning (docker/grafana/provisioning/dashboards) stores the JSON as it is: an import placeholder
  such as ``${DS_PROMETHEUS}`` is not substituted there, and a panel naming it finds no data source
  (grafana/grafana#10786). So every panel, target, annotation and variable names the ``datasource``
  variable instead, which Grafana resolves at run time.
- "Import dashboard" asks for one data source per ``__inputs`` entry and replaces that entry's
  ``${NAME}`` in every string of the JSON. The one place the file writes ``${DS_PROMETHEUS}`` is the
  ``datasource`` variable's current value: imported, the variable starts on the data source picked;
  provisioned, the placeholder matches no data source and Grafana selects the first Prometheus one,
  as it does for a variable with no current value (the compose stack provisions exactly one).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.core.journal import JournalSummary
from orchestrator.core.policy import WatchPolicy
from orchestrator.core.shadow_stats import ShadowReport, TensorSummary
from orchestrator.daemons.exporter import WatchMetrics
from orchestrator.daemons.shadow_metrics import ShadowMetrics
from orchestrator.fleet.gates import Assessment, GateResult, Verdict
from orchestrator.fleet.metrics import ControllerMetrics, FleetReading, RolloutRow
from orchestrator.fleet.rollout import start
from orchestrator.fleet.store import DeviceRecord

from .fleet.planning import fleet, plan
from .promql_names import (
    FLEET_METRICS,
    KNOWN_METRICS,
    ROOT,
    SHADOW_METRICS,
    WATCH_METRICS,
    Query,
    dashboard_metric_names,
    dashboard_queries,
    dashboard_variables,
    grafana_promql,
    load_dashboard,
    metric_names,
    selectors,
    variable_value,
)

PROVISIONING = ROOT / "docker" / "grafana" / "provisioning"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
INPUT = "DS_PROMETHEUS"
PLACEHOLDER = "${" + INPUT + "}"
TARGET_LABELS = {"instance", "job"}  # what Prometheus adds to every scraped series
MODEL = "classifier"


# --- the real exposition: which series exist, and with which labels --------------------------------

def watcher_exposition() -> str:
    """What ``orchestrate watch`` serves on /metrics after a tick of each kind: every series the watcher
    writes, written as the daemon writes it (its public methods, or the attribute and labels it uses)."""
    registry = CollectorRegistry()
    metrics = WatchMetrics(registry)
    rules = {name: rule.severity for name, rule in WatchPolicy().rules.items()}
    rule = next(iter(rules))
    metrics.initialise(MODEL, JournalSummary(), rules)
    metrics.set_residency(MODEL, 2, (1, 2), [1, 2])
    metrics.watch_rolled_back(MODEL, rule, quarantined=True)
    metrics.detection_latency.labels(MODEL, rule).observe(0.2)
    metrics.switch_duration.labels(MODEL, "rollback").observe(0.4)
    metrics.last_check.labels(MODEL).set(time.time())
    metrics.checks.labels(MODEL).inc()
    metrics.errors.labels(MODEL, "probe", "orchestrator").inc()
    metrics.pending_writes.set(0)
    metrics.triton_up.set(1)
    metrics.probe_latency.labels(MODEL).observe(0.01)
    metrics.rule_value.labels(MODEL, rule, "p99_ms").set(12.0)
    metrics.probe_divergence.labels(MODEL, "LOGITS").set(0.001)
    metrics.production_samples.labels(MODEL).inc()
    metrics.set_labels(MODEL, {"stable": 2, "canary": 1})
    return generate_latest(registry).decode()


def shadow_exposition() -> str:
    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    metrics.samples.labels(MODEL).inc()
    metrics.dropped.labels(MODEL).inc(0)
    metrics.errors.labels(MODEL).inc(0)
    metrics.queue.labels(MODEL).set(0)
    metrics.publish(ShadowReport(MODEL, 2, compared=4, tensors={"LOGITS": TensorSummary(samples=4,
                                                                                          mean_abs_diff=0.01)}))
    return generate_latest(registry).decode()


def fleet_exposition() -> str:
    """What ``orchestrate fleet serve`` serves after a step: a rollout with its gates assessed, devices, a block."""
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    views = fleet(20)
    rollout = start(plan(), views, 0.0)
    rollout = replace(rollout, assessment=Assessment((
        GateResult("verified", Verdict.INCONCLUSIVE, 0.5, 2, "wave still going"),
        GateResult("errors", Verdict.FAIL, 0.05, 1000, "50 errors in 1000 requests"))))
    devices = [DeviceRecord(d, dict(v.labels), True, None, 5.0, 5.0, 0) for d, v in views.items()]
    metrics.show(FleetReading(10.0, devices, [RolloutRow(rollout.id, rollout.plan.model, rollout.phase, 9.0)],
                              [rollout], blocks=1, updated_at={rollout.id: 9.0}))
    metrics.messages.inc(40)
    metrics.steps.inc()
    metrics.step_seconds.observe(0.02)
    return generate_latest(registry).decode()


def exposed_labels(text: str) -> dict[str, set[str]]:
    """Each sample name of an exposition and the labels it carries, once Prometheus has scraped it."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set(TARGET_LABELS)).update(sample.labels)
    return labels


@pytest.fixture(scope="module")
def series_labels() -> dict[str, set[str]]:
    return {**exposed_labels(watcher_exposition()), **exposed_labels(shadow_exposition()),
            **exposed_labels(fleet_exposition())}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


# --- the checker ------------------------------------------------------------------------------

def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every key of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            yield from _walk(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}/{i}")


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return dashboard.get("templating", {}).get("list", [])


def provisioned_uids() -> set[str]:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    return {source["uid"] for source in document["datasources"] if "uid" in source}


def datasource_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    for path, key, value in _walk(dashboard):
        if key == "datasource" and value != DATASOURCE_REF:
            problems.append(f"{path}: datasource {value!r} is not the datasource variable")
    text = json.dumps(dashboard)
    problems += [f"the provisioned uid {uid!r} is written in the dashboard" for uid in provisioned_uids()
                 if f'"{uid}"' in text]
    datasource = [v for v in _variables(dashboard) if v.get("type") == "datasource"]
    if [(v.get("name"), v.get("query")) for v in datasource] != [("datasource", "prometheus")]:
        problems.append(f"no single Prometheus datasource variable named datasource: {datasource}")
    else:
        current = datasource[0].get("current") or {}
        if current and (current.get("value"), current.get("text")) != (PLACEHOLDER, PLACEHOLDER):
            problems.append(f"the datasource variable starts on {current!r}, a fixed data source")
        # Provisioning leaves the placeholder as it is: anywhere but there it names no data source.
        stray = text.replace(json.dumps(current), "").count("${DS_")
        if stray:
            problems.append(f"{stray} import placeholder(s) outside the datasource variable's current value")
    inputs = dashboard.get("__inputs", [])
    if [(i.get("name"), i.get("type"), i.get("pluginId")) for i in inputs] != [(INPUT, "datasource", "prometheus")]:
        problems.append(f"__inputs should ask for one Prometheus data source, {INPUT}: {inputs}")
    return problems


def promql(query: Query, dashboard: dict[str, Any]) -> str:
    return grafana_promql(query.expr, dashboard_variables(dashboard))


def query_problems(dashboard: dict[str, Any]) -> list[str]:
    problems = []
    for query in dashboard_queries(dashboard):
        try:
            unknown = metric_names(promql(query, dashboard)) - KNOWN_METRICS
        except (KeyError, ValueError) as exc:
            problems.append(f"{query.where}: {exc}")
            continue
        if unknown:
            problems.append(f"{query.where} selects unknown metrics {sorted(unknown)}")
    return problems


def required_filters(name: str, labels: dict[str, set[str]]) -> dict[str, str | None]:
    """Label -> the variable a selector of this series must filter it on (None: must not filter on it).

    The watcher's series: on the orchestrator and the model (a series without a model label must not
    filter on model: the filter would empty it). Triton's: on the Triton instance, its own scrape
    target, and the model. A shadow run's: on the model only (its own scrape target too). The fleet
    controller's: on the controller, its own scrape target, and the rollout where the series has one."""
    if name in WATCH_METRICS:
        return {"instance": "instance", "model": "model" if "model" in labels.get(name, set()) else None}
    if name in SHADOW_METRICS:
        return {"model": "model"}
    if name in FLEET_METRICS:
        return {"instance": "controller", "rollout": "rollout" if "rollout" in labels.get(name, set()) else None}
    if name.startswith("nv_"):
        return {"instance": "triton", "model": "model"}
    return {}


def filter_problems(dashboard: dict[str, Any], labels: dict[str, set[str]]) -> list[str]:
    problems = []
    for query in dashboard_queries(dashboard):
        if query.where.startswith("variable"):
            continue  # test_variables_pick_devices_and_models
        try:
            found = selectors(promql(query, dashboard))
        except (KeyError, ValueError):
            continue  # query_problems says so
        for selector in found:
            matchers = {m.name: m for m in selector.matchers.matchers}
            for label, variable in required_filters(selector.name, labels).items():
                matcher = matchers.get(label)
                if variable is None:
                    if matcher is not None:
                        problems.append(f"{query.where}: {selector.name} has no {label} label to filter on")
                elif matcher is None or matcher.op != promql_parser.MatchOp.Re \
                        or matcher.value != variable_value(variable):
                    problems.append(f'{query.where}: {selector.name} is not filtered {label}=~"${variable}"')
    return problems


def _is_scalar(node: Any) -> bool:
    if isinstance(node, promql_parser.NumberLiteral):
        return True
    if isinstance(node, promql_parser.Call):
        return node.func.return_type == promql_parser.ValueType.Scalar
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr)):
        return _is_scalar(node.expr)
    return False


def result_labels(node: Any, labels: dict[str, set[str]]) -> set[str] | None:
    """The labels an expression's result series carry (None: not known here, e.g. Triton's series)."""
    if isinstance(node, promql_parser.VectorSelector):
        return labels.get(node.name)
    if isinstance(node, promql_parser.MatrixSelector):
        return result_labels(node.vector_selector, labels)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        return result_labels(node.expr, labels)
    if _is_scalar(node) or isinstance(node, promql_parser.StringLiteral):
        return set()
    if isinstance(node, promql_parser.Call):
        if node.func.name == "histogram_quantile":
            inner = result_labels(node.args[1], labels)
            return None if inner is None else inner - {"le"}
        if node.func.name in ("label_replace", "label_join"):
            return None
        vectors = [arg for arg in node.args if not _is_scalar(arg) and not isinstance(arg, promql_parser.StringLiteral)]
        return result_labels(vectors[0], labels) if vectors else set()
    if isinstance(node, promql_parser.AggregateExpr):
        inner = result_labels(node.expr, labels)
        if str(node.op) in ("topk", "bottomk", "limitk", "limit_ratio"):
            return inner
        if node.modifier is None:
            return set()
        if node.modifier.type == promql_parser.AggModifierType.By:
            return set(node.modifier.labels)
        return None if inner is None else inner - set(node.modifier.labels)
    if isinstance(node, promql_parser.BinaryExpr):
        lhs, rhs = result_labels(node.lhs, labels), result_labels(node.rhs, labels)
        if str(node.op) in ("and", "unless"):
            return lhs  # a set operation keeps the left side's series as they are; on() only matches
        if _is_scalar(node.rhs):
            return lhs
        if _is_scalar(node.lhs):
            return rhs
        modifier = node.modifier
        card = modifier.card if modifier else promql_parser.VectorMatchCardinality.OneToOne
        matching = modifier.matching if modifier else None
        if card == promql_parser.VectorMatchCardinality.ManyToOne:
            return None if lhs is None else lhs | set(modifier.group_labels or ())
        if card == promql_parser.VectorMatchCardinality.OneToMany:
            return None if rhs is None else rhs | set(modifier.group_labels or ())
        if matching is not None and matching.type == promql_parser.LabelModifierType.Include:
            return set(matching.labels)
        if matching is not None:
            return None if lhs is None else lhs - set(matching.labels)
        return lhs
    return None


def label_problems(dashboard: dict[str, Any], labels: dict[str, set[str]]) -> list[str]:
    """A legend or annotation shows only labels its query's result has (else Grafana shows nothing there)."""
    problems = []
    for query in dashboard_queries(dashboard):
        if query.where.startswith("variable"):
            continue
        try:
            node = promql_parser.parse(promql(query, dashboard))
        except (KeyError, ValueError):
            continue
        result = result_labels(node, labels)
        if result is not None and set(query.labels_shown) - result:
            problems.append(f"{query.where} shows {sorted(set(query.labels_shown) - result)}, which its result "
                            f"(labels {sorted(result)}) lacks")
    return problems


def problems(dashboard: dict[str, Any], labels: dict[str, set[str]]) -> list[str]:
    return [*datasource_problems(dashboard), *query_problems(dashboard), *filter_problems(dashboard, labels),
            *label_problems(dashboard, labels)]


# --- the dashboard ---------------------------------------------------------------------------------

def test_every_query_parses_and_selects_only_known_metrics(dashboard: dict[str, Any]) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) > 20
    assert query_problems(dashboard) == []


def test_no_data_source_is_fixed(dashboard: dict[str, Any]) -> None:
    assert datasource_problems(dashboard) == []
    refs = [value for _, key, value in _walk(dashboard) if key == "datasource"]
    # every panel but a row, every target, every annotation and every query variable
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(refs) == len(panels) + sum(len(p["targets"]) for p in panels) + len(
        dashboard["annotations"]["list"]) + sum(v["type"] == "query" for v in _variables(dashboard))


def grafana_import(dashboard: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    """What "Import dashboard" stores (Grafana's DashTemplateEvaluator): ``${NAME}`` of each declared
    input replaced in every string by the value picked for it, anything else left, ``__inputs`` dropped."""
    values = {"${" + i["name"] + "}": chosen[i["name"]] for i in dashboard.get("__inputs", [])}

    def evaluate(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: evaluate(v) for k, v in value.items() if k != "__inputs"}
        if isinstance(value, list):
            return [evaluate(v) for v in value]
        if isinstance(value, str):
            return re.sub(r"\$\{.+?\}", lambda m: values.get(m[0], m[0]), value)
        return value

    return evaluate(dashboard)


def test_imported_it_starts_on_the_data_source_picked_and_provisioned_on_the_stacks_only_prometheus(
        dashboard: dict[str, Any]) -> None:
    imported = grafana_import(dashboard, {INPUT: "their-prometheus"})
    (variable,) = [v for v in _variables(imported) if v["type"] == "datasource"]
    assert variable["current"]["value"] == "their-prometheus"
    assert "${DS_" not in json.dumps(imported) and "__inputs" not in imported
    assert {json.dumps(v) for _, k, v in _walk(imported) if k == "datasource"} == {json.dumps(DATASOURCE_REF)}
    # Provisioned, the placeholder matches no data source and Grafana takes the first Prometheus one: the
    # compose stack has exactly one, the default, and the file provider loads the JSON unchanged.
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == variable["query"] == "prometheus" and source["isDefault"] is True
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert provider["type"] == "file"


def test_variables_pick_devices_and_models(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in _variables(dashboard)}
    # each after those it uses
    assert list(variables) == ["datasource", "instance", "model", "triton", "controller", "rollout"]
    expected = {"instance": ("orchestrator_served_version", "instance", {}),  # label filtered -> variable
                "model": ("orchestrator_served_version", "model", {"instance": "instance"}),
                "triton": ("nv_inference_count", "instance", {"model": "model"}),
                "controller": ("orchestrator_fleet_devices", "instance", {}),
                "rollout": ("orchestrator_fleet_rollout_phase", "rollout", {"instance": "controller"})}
    queries = {q.where.removeprefix("variable "): q for q in dashboard_queries(dashboard)}
    for name, (metric, label, uses) in expected.items():
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE_REF, name
        assert variable["multi"] is True and variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name  # All matches every series, listed or not yet
        (selector,) = selectors(promql(queries[name], dashboard))
        assert (selector.name, queries[name].labels_shown) == (metric, (label,)), name
        filters = {m.name: m.value for m in selector.matchers.matchers}
        assert filters == {label: variable_value(used) for label, used in uses.items()}, name


def test_every_selector_filters_on_its_devices_and_models(dashboard: dict[str, Any],
                                                          series_labels: dict[str, set[str]]) -> None:
    assert filter_problems(dashboard, series_labels) == []
    assert "Triton" in dashboard["description"] and "relabel" in dashboard["description"]


def test_legends_and_annotations_show_labels_their_queries_keep(dashboard: dict[str, Any],
                                                                series_labels: dict[str, set[str]]) -> None:
    assert label_problems(dashboard, series_labels) == []


def _annotation(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [a for a in dashboard["annotations"]["list"] if a["name"] == name]
    return found


def test_promotes_and_rollbacks_are_annotated_from_prometheus(dashboard: dict[str, Any]) -> None:
    variables = dashboard_variables(dashboard)
    promotes, rollbacks = _annotation(dashboard, "Promotes"), _annotation(dashboard, "Rollbacks")
    for annotation in (promotes, rollbacks):
        assert annotation["enable"] is True and annotation["datasource"] == DATASOURCE_REF
        assert "{{model}}" in annotation["titleFormat"]
    assert metric_names(grafana_promql(promotes["expr"], variables)) == {"orchestrator_promotions_total"}
    assert "{{outcome}}" in promotes["titleFormat"]
    assert metric_names(grafana_promql(rollbacks["expr"], variables)) == {"orchestrator_rollbacks_total"}
    assert {"{{trigger}}", "{{rule}}"} <= set(re.findall(r"\{\{\w+\}\}", rollbacks["textFormat"]))
    changes = _annotation(dashboard, "Served version changes")
    assert metric_names(grafana_promql(changes["expr"], variables)) == {"orchestrator_served_version"}
    assert all(n in WATCH_METRICS for a in dashboard["annotations"]["list"]
               for n in metric_names(grafana_promql(a["expr"], variables)))


PANELS = {  # title -> (type, a metric it must select)
    "Served version": ("stat", "orchestrator_served_version"),
    "Rollbacks (24 h)": ("stat", "orchestrator_rollbacks_total"),
    "Last watcher check (seconds ago)": ("stat", "orchestrator_last_check_timestamp_seconds"),
    "Rollback blocked": ("stat", "orchestrator_rollback_blocked"),
    "Pending journal writes": ("stat", "orchestrator_pending_writes"),
    "Inference failures (req/s)": ("timeseries", "nv_inference_request_failure"),
    "Triton request latency": ("timeseries", "nv_inference_request_duration_us"),
    "Requests by version (req/s)": ("timeseries", "nv_inference_request_success"),
    "Shadow divergence": ("timeseries", "orchestrator_shadow_divergence"),
    "Rule values": ("timeseries", "orchestrator_rule_value"),
    "Watch errors by where and kind (per minute)": ("timeseries", "orchestrator_watch_errors_total"),
    "Detection latency (p50, p95 over the time range)": ("bargauge", "orchestrator_detection_latency_seconds_bucket"),
    "Switch duration (p50, p95 over the time range)": ("bargauge", "orchestrator_switch_duration_seconds_bucket"),
    "Promotions by outcome (time range)": ("bargauge", "orchestrator_promotions_total"),
    "Rollout phase": ("stat", "orchestrator_fleet_rollout_phase"),
    "Wave": ("stat", "orchestrator_fleet_rollout_waves"),
    "Devices online": ("stat", "orchestrator_fleet_devices"),
    "Left on the version": ("stat", "orchestrator_fleet_left_on_version"),
    "Blocks in force": ("stat", "orchestrator_fleet_blocks"),
    "Devices per state": ("timeseries", "orchestrator_fleet_rollout_devices"),
    "Gate values and their bounds": ("timeseries", "orchestrator_fleet_gate_value"),
    "Gate verdicts": ("stat", "orchestrator_fleet_gate_verdict"),
    "Device report age": ("timeseries", "orchestrator_fleet_device_last_report_age_seconds"),
    "Controller: step time (p95) and messages": ("timeseries", "orchestrator_fleet_step_seconds_bucket"),
}


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in dashboard["panels"] if p["title"] == title]
    return found


def _shown(dashboard: dict[str, Any], title: str) -> set[str]:
    prefix = f"panel {title!r} "
    return {label for q in dashboard_queries(dashboard) if q.where.startswith(prefix) for label in q.labels_shown}


def test_the_panels_show_versions_rollbacks_rules_latencies_errors_and_traffic(dashboard: dict[str, Any]) -> None:
    variables = dashboard_variables(dashboard)
    for title, (kind, metric) in PANELS.items():
        panel = _panel(dashboard, title)
        assert panel["type"] == kind, title
        used = {n for t in panel["targets"] for n in metric_names(grafana_promql(t["expr"], variables))}
        assert metric in used, title
    steps = _panel(dashboard, "Rollback blocked")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "red", "value": 1} in steps  # red when 1
    for title in ("Detection latency (p50, p95 over the time range)", "Switch duration (p50, p95 over the time range)"):
        exprs = [t["expr"] for t in _panel(dashboard, title)["targets"]]
        assert {re.search(r"histogram_quantile\((0\.\d+),", e)[1] for e in exprs} == {"0.5", "0.95"}  # type: ignore[index]
        assert "model" in _shown(dashboard, title)
    assert {"rule", "value"} <= _shown(dashboard, "Rule values")
    assert {"where", "kind"} <= _shown(dashboard, "Watch errors by where and kind (per minute)")
    assert "outcome" in _shown(dashboard, "Promotions by outcome (time range)")


def test_the_fleet_row_holds_the_fleet_controllers_panels_and_only_them(dashboard: dict[str, Any]) -> None:
    (row,) = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert row["title"] == "Fleet rollouts" and row["collapsed"] is False
    variables = dashboard_variables(dashboard)
    for panel in dashboard["panels"]:
        if panel is row:
            continue
        used = {n for t in panel["targets"] for n in metric_names(grafana_promql(t["expr"], variables))}
        below = panel["gridPos"]["y"] > row["gridPos"]["y"]
        assert (used <= FLEET_METRICS) == below, panel["title"]
    assert {"rollout", "phase"} <= _shown(dashboard, "Rollout phase")
    assert {"rollout", "state"} <= _shown(dashboard, "Devices per state")
    assert {"rollout", "gate", "bound"} <= _shown(dashboard, "Gate values and their bounds")
    steps = _panel(dashboard, "Left on the version")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "red", "value": 1} in steps


def test_panels_have_their_own_ids_and_places(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_real_exposition_has_every_series_and_label_the_dashboard_uses(dashboard: dict[str, Any]) -> None:
    watcher, shadow = exposed_labels(watcher_exposition()), exposed_labels(shadow_exposition())
    controller = exposed_labels(fleet_exposition())
    assert WATCH_METRICS <= set(watcher) and SHADOW_METRICS <= set(shadow)  # the exercise wrote every series
    assert FLEET_METRICS <= set(controller)
    used = {n for n in dashboard_metric_names(dashboard) if n.startswith("orchestrator_")}
    assert used - WATCH_METRICS - SHADOW_METRICS - FLEET_METRICS == set()
    assert {n for n in used if n in WATCH_METRICS} <= set(watcher)
    assert {n for n in used if n in SHADOW_METRICS} <= set(shadow)
    # every label a query names on an orchestrator series is one the series carries
    variables = dashboard_variables(dashboard)
    labels = {**watcher, **shadow, **controller}
    for query in dashboard_queries(dashboard):
        for selector in selectors(grafana_promql(query.expr, variables)):
            if selector.name in labels:
                missing = {m.name for m in selector.matchers.matchers} - labels[selector.name]
                assert not missing, f"{query.where}: {selector.name} has no {missing}"


# --- the checker catches a broken dashboard ------------------------------------------------------------

def _target(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    return _panel(dashboard, title)["targets"][0]


def _replace_in(target: dict[str, Any], old: str, new: str) -> None:
    assert old in target["expr"]
    target["expr"] = target["expr"].replace(old, new)


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "panel-fixed-uid": (lambda d: _panel(d, "Served version").update(
        datasource={"type": "prometheus", "uid": "orch-prometheus"}), "not the datasource variable"),
    "target-fixed-uid": (lambda d: _target(d, "Rule values").update(
        datasource={"type": "prometheus", "uid": "abc123"}), "not the datasource variable"),
    "annotation-fixed-uid": (lambda d: _annotation(d, "Rollbacks").update(
        datasource={"type": "prometheus", "uid": "abc123"}), "not the datasource variable"),
    "import-placeholder-in-a-panel": (lambda d: _panel(d, "Served version").update(
        datasource={"type": "prometheus", "uid": PLACEHOLDER}), "import placeholder"),
    "variable-starts-on-a-fixed-source": (lambda d: d["templating"]["list"][0].update(
        current={"text": "Prometheus", "value": "orch-prometheus"}), "fixed data source"),
    "no-inputs": (lambda d: d.pop("__inputs"), "__inputs"),
    "misspelt-metric": (lambda d: _replace_in(_target(d, "Rollbacks (24 h)"), "orchestrator_rollbacks_total",
                                              "orchestrator_rollback_total"), "unknown metrics"),
    "no-model-filter": (lambda d: _replace_in(_target(d, "Rule values"), ',model=~"$model"', ""),
                        'not filtered model=~"$model"'),
    "no-instance-filter": (lambda d: _replace_in(_target(d, "Served version"), 'instance=~"$instance",', ""),
                           'not filtered instance=~"$instance"'),
    "model-filter-on-equality": (lambda d: _replace_in(_target(d, "Served version"), 'model=~"$model"',
                                                       'model="$model"'), 'not filtered model=~"$model"'),
    "triton-on-the-orchestrators-instance": (lambda d: _replace_in(
        _target(d, "Requests by version (req/s)"), "$triton", "$instance"), 'not filtered instance=~"$triton"'),
    "model-filter-on-a-series-without-model": (lambda d: _replace_in(
        _target(d, "Pending journal writes"), '"$instance"', '"$instance",model=~"$model"'), "no model label"),
    "unknown-variable": (lambda d: _replace_in(_target(d, "Rule values"), "$model", "$modle"), "no variable"),
    "syntax-error": (lambda d: _replace_in(_target(d, "Rollbacks (24 h)"), "[24h]", ""), "expected type matrix"),
    "legend-label-the-sum-drops": (lambda d: _target(d, "Rollbacks (24 h)").update(
        legendFormat="{{model}} {{trigger}}"), "['trigger']"),
    "fleet-on-the-watchers-instance": (lambda d: _replace_in(_target(d, "Devices per state"), "$controller",
                                                             "$instance"), 'not filtered instance=~"$controller"'),
    "fleet-without-the-rollout-filter": (lambda d: _replace_in(_target(d, "Left on the version"),
                                                               ',rollout=~"$rollout"', ""),
                                         'not filtered rollout=~"$rollout"'),
    "rollout-filter-on-a-fleet-series-without-rollout": (lambda d: _replace_in(
        _target(d, "Devices online"), '"$controller"', '"$controller",rollout=~"$rollout"'), "no rollout label"),
    "misspelt-fleet-metric": (lambda d: _replace_in(_target(d, "Gate values and their bounds"),
                                                    "orchestrator_fleet_gate_value", "orchestrator_fleet_gate_values"),
                              "unknown metrics"),
}


def test_the_dashboard_passes_the_whole_check(dashboard: dict[str, Any], series_labels: dict[str, set[str]]) -> None:
    assert problems(dashboard, series_labels) == []


@pytest.mark.parametrize("name", BROKEN)
def test_the_check_catches_a_broken_dashboard(dashboard: dict[str, Any], series_labels: dict[str, set[str]],
                                              name: str) -> None:
    mutate, words = BROKEN[name]
    broken = copy.deepcopy(dashboard)
    mutate(broken)
    found = problems(broken, series_labels)
    assert found, f"{name}: the check passed a broken dashboard"
    assert any(words in problem for problem in found), found
