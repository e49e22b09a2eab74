"""``orchestrate fleet ...``: the controller's commands (serve, enrol, rollouts, devices, blocks).

Every command but ``serve`` and ``sign-plan`` opens the controller's store (``--config`` or
ORCH_FLEET_CONFIG) and runs one transaction; a serving controller picks the change up at its next
step. Added to the main application by ``register(app)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from orchestrator.cli.common import as_json_option, fail, run
from orchestrator.errors import UsageError

if TYPE_CHECKING:
    from orchestrator.fleet.controller import Controller
    from orchestrator.fleet.controller_config import ControllerConfig

T = TypeVar("T")
PATH = click.Path(path_type=Path)
config_option = click.option("--config", "config_path", type=PATH, default=None, metavar="FILE",
                             help="The controller's configuration [env ORCH_FLEET_CONFIG]")


def _config(path: Path | None) -> ControllerConfig:
    from orchestrator.fleet.controller_config import load_controller_config  # noqa: PLC0415

    return run(lambda: load_controller_config(path))


def _controller(path: Path | None) -> Controller:
    def build() -> Controller:
        from orchestrator.delivery.signing import (  # noqa: PLC0415
            key_id,
            load_private_key,
            load_trusted_keys,
            require_distinct_keys,
        )
        from orchestrator.fleet.controller import Controller  # noqa: PLC0415
        from orchestrator.fleet.store import FleetStore  # noqa: PLC0415

        config = _config(path)
        key, release_keys = load_private_key(config.key), load_trusted_keys(config.release_keys)
        # The controller signs what devices obey; were it a release key too, a stolen controller key would also
        # approve plans.
        require_distinct_keys({f"the controller key ({config.key})": {key_id(key.public_key()): key.public_key()},
                               f"a release key ({config.release_keys})": release_keys})
        return Controller(FleetStore(config.store), key, release_keys)
    return run(build)


def _with(path: Path | None, action: Callable[[Controller], T]) -> T:
    controller = _controller(path)
    try:
        return run(lambda: action(controller))
    finally:
        controller.store.close()


def _when(moment: float | None) -> str:
    return "-" if moment is None else datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(UsageError(f"{pair!r}: a label is KEY=VALUE"))
        labels[key] = value
    return labels


class _InOrder(click.Group):
    """Commands in the order an operator meets them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group("fleet", cls=_InOrder,
             help="Roll a model version out to a fleet of devices over MQTT, in gated waves.")
def fleet_app() -> None:
    pass


@fleet_app.command("serve", help="Run the controller: read devices' reports, step every rollout, publish.")
@config_option
def serve(config_path: Path | None) -> None:
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from orchestrator.fleet.controller_service import ControllerService  # noqa: PLC0415
    from orchestrator.fleet.metrics import ControllerMetrics, serve_controller_metrics  # noqa: PLC0415

    config = _config(config_path)
    controller = _controller(config_path)
    metrics = ControllerMetrics()
    if config.metrics is not None:
        run(lambda: serve_controller_metrics(metrics, *config.metrics))  # type: ignore[misc]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = ControllerService(controller, config.broker, config.gate_interval_s, on_tick=metrics.refresh)
        click.echo(f"fleet controller on {config.broker} (store {config.store}, a step every "
                   f"{config.gate_interval_s:g} s)", err=True)
        await service.run(stop)

    run(lambda: asyncio.run(main()))


@fleet_app.command("enrol", help="Add devices with their labels (the labels rollouts select on).")
@click.argument("devices", nargs=-1, required=True)
@click.option("--label", "pairs", multiple=True, metavar="KEY=VALUE", help="A label of these devices (repeat)")
@click.option("--credentials", type=PATH, default=None, metavar="DIR",
              help="With broker_dir configured: add each device as a broker user and write DIR/<device>.pass")
@config_option
def enrol(devices: tuple[str, ...], pairs: tuple[str, ...], credentials: Path | None,
          config_path: Path | None) -> None:
    from orchestrator.fleet import topics  # noqa: PLC0415

    labels = _labels(pairs)
    for device in devices:
        run(lambda d=device: topics.check_device_id(d))  # type: ignore[misc]
    config = _config(config_path)
    _with(config_path, lambda c: c.store.enrol({d: labels for d in devices}))
    if credentials is not None:
        if config.broker_dir is None:
            fail(UsageError("--credentials needs broker_dir in the controller's configuration"))
        _write_credentials(config, devices, credentials)
    for device in devices:
        click.echo(f"enrolled {device}" + (f" ({', '.join(f'{k}={v}' for k, v in labels.items())})" if labels else ""))


def _write_credentials(config: ControllerConfig, devices: tuple[str, ...], folder: Path) -> None:
    def write() -> None:
        from orchestrator.fleet.broker import BrokerFiles  # noqa: PLC0415
        from orchestrator.store.atomic import write_atomic  # noqa: PLC0415

        assert config.broker_dir is not None
        files = BrokerFiles(config.broker_dir, port=config.broker.port)  # reads the users it holds
        folder.mkdir(parents=True, exist_ok=True)
        for device, password in files.add_users(devices).items():
            write_atomic(folder / f"{device}.pass", password + "\n")
            (folder / f"{device}.pass").chmod(0o600)
        click.echo(f"broker users written to {files.passwords}; reload the broker (SIGHUP) to admit them", err=True)
    run(write)


@fleet_app.command("retire", help="Take devices out of the fleet: no rollout selects them again, the serving "
                                  "controller clears their retained topics, and with broker_dir configured their "
                                  "broker users are removed. Their events and rollout history stay.")
@click.argument("devices", nargs=-1, required=True)
@click.option("--reason", default="retired by an operator", help="Kept with the record of the retirement")
@config_option
def retire(devices: tuple[str, ...], reason: str, config_path: Path | None) -> None:
    from orchestrator.fleet import topics  # noqa: PLC0415

    config = _config(config_path)
    cleared = _with(config_path, lambda c: c.store.retire(devices, reason))
    if config.broker_dir is not None:
        def remove() -> Path:
            from orchestrator.fleet.broker import BrokerFiles  # noqa: PLC0415

            assert config.broker_dir is not None
            files = BrokerFiles(config.broker_dir, port=config.broker.port)
            for device in devices:
                files.remove_user(device)
            return files.passwords
        passwords = run(remove)
        click.echo(f"broker users removed from {passwords}; reload the broker (SIGHUP) to refuse their next "
                   f"connection (one open now lasts until it drops; the controller ignores what it sends)", err=True)
    for device in devices:
        click.echo(f"retired {device} ({reason}); {sum(t.startswith(topics.device_prefix(device)) for t in cleared)} "
                   f"retained topics to clear")


@fleet_app.command("broker-config", help="Write a Mosquitto configuration for the fleet: listener, the ACL that "
                                         "keeps each device to its own topics, and the controller's user.")
@click.argument("folder", type=PATH)
@click.option("--port", type=int, default=1883, help="Plain MQTT listener (loopback or a trusted network only)")
@click.option("--host", default="127.0.0.1", help="Address the plain listener binds (in a container: 0.0.0.0, or "
                                                  "the controller and the published port cannot reach it)")
@click.option("--tls-ca", type=PATH, default=None, help="CA that signs the devices' client certificates")
@click.option("--tls-cert", type=PATH, default=None, help="The broker's certificate")
@click.option("--tls-key", type=PATH, default=None, help="The broker's private key")
@click.option("--tls-port", type=int, default=8883, help="TLS listener (client certificates; CN = device id)")
@click.option("--run-as", default=None, help="User Mosquitto drops to [default: whoever runs it]")
@click.option("--log-stderr", is_flag=True, help="Log to stderr (a container) instead of a file in FOLDER")
def broker_config(folder: Path, port: int, host: str, tls_ca: Path | None, tls_cert: Path | None,
                  tls_key: Path | None, tls_port: int, run_as: str | None, log_stderr: bool) -> None:
    def write() -> str:
        from orchestrator.fleet.broker import BrokerFiles  # noqa: PLC0415
        from orchestrator.fleet.transport import TlsFiles  # noqa: PLC0415
        from orchestrator.store.atomic import write_atomic  # noqa: PLC0415

        given = [tls_ca, tls_cert, tls_key]
        if any(given) and not all(given):
            raise UsageError("TLS needs --tls-ca, --tls-cert and --tls-key together")
        tls = TlsFiles(tls_ca.resolve(), tls_cert.resolve(), tls_key.resolve()) if all(given) else None  # type: ignore[union-attr]
        files = BrokerFiles(folder, port=port, host=host, tls=tls, tls_port=tls_port if tls else None,
                            run_as=run_as, log_file=not log_stderr)
        files.write()
        password = files.add_controller()
        secret = folder / "controller.pass"
        write_atomic(secret, password + "\n")
        secret.chmod(0o600)
        return str(secret)
    secret = run(write)
    click.echo(f"wrote {folder}/mosquitto.conf, acl, passwords; the controller's password is in {secret} "
               f"(broker.password_file in the controller's configuration)")


@fleet_app.command("sign-plan", help="Sign a rollout plan with a release key (writes PLAN.yaml.sig beside it).")
@click.argument("plan", type=PATH)
@click.option("--key", type=PATH, required=True, help="The release key (orchestrate keygen): not the package key")
def sign_plan(plan: Path, key: Path) -> None:
    from orchestrator.fleet.plan_file import sign_plan as sign  # noqa: PLC0415

    sig = run(lambda: sign(plan, key))
    click.echo(f"signed {plan}: {sig}")


@fleet_app.group("rollout", cls=_InOrder, help="Start, watch, pause, resume or abort a rollout.")
def rollout_app() -> None:
    pass


@rollout_app.command("start", help="Start the rollout a signed plan describes.")
@click.argument("plan", type=PATH)
@config_option
def rollout_start(plan: Path, config_path: Path | None) -> None:
    rollout = _with(config_path, lambda c: c.start(plan))
    waves = ", ".join(f"{w.name} {sum(a.wave == i for a in rollout.assignments.values())}"
                      for i, w in enumerate(rollout.plan.waves))
    click.echo(f"rollout {rollout.id} started: {len(rollout.assignments)} devices ({waves})")


def _status(controller: Controller, rollout_id: str | None) -> list[Any]:
    from orchestrator.fleet.status import rollout_status  # noqa: PLC0415

    ids = [rollout_id] if rollout_id else controller.store.rollout_ids()[-5:]
    return [rollout_status(controller.store, r) for r in ids]


@rollout_app.command("status", help="Phase, wave, devices per state, gates, and the rollout's record.")
@click.argument("rollout_id", required=False, metavar="ROLLOUT")
@click.option("--watch", type=float, default=None, metavar="SECONDS", help="Print it again every SECONDS")
@as_json_option
@config_option
def rollout_status(rollout_id: str | None, watch: float | None, as_json: bool, config_path: Path | None) -> None:
    from orchestrator.fleet.status import status_lines  # noqa: PLC0415

    while True:
        found = _with(config_path, lambda c: _status(c, rollout_id))
        if as_json:
            click.echo(json.dumps([s.to_json() for s in found], indent=2))
        elif not found:
            click.echo("no rollouts")
        for status in [] if as_json else found:
            click.echo("\n".join(status_lines(status)))
        if watch is None:
            return
        time.sleep(watch)


@rollout_app.command("pause", help="Tell no more devices until resumed (gates still halt it).")
@click.argument("rollout_id", metavar="ROLLOUT")
@click.option("--reason", default="paused by an operator")
@config_option
def rollout_pause(rollout_id: str, reason: str, config_path: Path | None) -> None:
    rollout = _with(config_path, lambda c: c.pause(rollout_id, reason))
    click.echo(f"rollout {rollout.id}: {rollout.phase.value}")


@rollout_app.command("resume", help="Approve the next wave, or end a pause.")
@click.argument("rollout_id", metavar="ROLLOUT")
@config_option
def rollout_resume(rollout_id: str, config_path: Path | None) -> None:
    rollout = _with(config_path, lambda c: c.resume(rollout_id))
    click.echo(f"rollout {rollout.id}: {rollout.phase.value}, wave {rollout.plan.waves[rollout.wave].name}")


@rollout_app.command("abort", help="Stop the rollout and revert every device that was told the version.")
@click.argument("rollout_id", metavar="ROLLOUT")
@click.option("--reason", default="aborted by an operator")
@config_option
def rollout_abort(rollout_id: str, reason: str, config_path: Path | None) -> None:
    rollout = _with(config_path, lambda c: c.abort(rollout_id, reason))
    reverting = sum(a.state.value == "reverting" for a in rollout.assignments.values())
    click.echo(f"rollout {rollout.id}: aborted; {reverting} devices told to revert")


@fleet_app.command("devices", help="Enrolled devices: labels, presence, what they serve, last report.")
@click.option("--model", default=None, help="Show this model's served version")
@click.option("--retired", is_flag=True, help="The retired devices instead: when, and why")
@as_json_option
@config_option
def devices(model: str | None, retired: bool, as_json: bool, config_path: Path | None) -> None:
    if retired:
        gone = _with(config_path, lambda c: c.store.retired())
        if as_json:
            click.echo(json.dumps([{"device": r.id, "labels": r.labels, "retired_at": r.retired_at,
                                    "reason": r.reason} for r in gone], indent=2))
        for r in [] if as_json else gone:
            labels = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
            click.echo(f"{r.id:<24} retired {_when(r.retired_at)}: {r.reason} ({labels})")
        return
    records = _with(config_path, lambda c: c.store.devices())
    rows = []
    for d in records:
        models = (d.report or {}).get("models") or {}
        served = {m: (e or {}).get("served") for m, e in models.items() if model is None or m == model}
        rows.append({"device": d.id, "labels": d.labels, "online": d.online, "served": served,
                     "report_at": d.report_at, "acked_events": d.acked})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        served = " ".join(f"{m}:v{v}" for m, v in sorted(r["served"].items()) if v is not None) or "-"
        click.echo(f"{r['device']:<24} {'online ' if r['online'] else 'offline'} {served:<20} {labels} "
                   f"(report {_when(r['report_at'])}, events {r['acked_events']})")


@fleet_app.command("block", help="Block a version on the devices of one label: accept a rollout's proposal "
                                 "(ROLLOUT), or name LABEL=VALUE with --model and --sha256.")
@click.argument("target")
@click.option("--model", default=None)
@click.option("--sha256", default=None, help="The package's sha256")
@click.option("--reason", default="blocked by an operator")
@config_option
def block(target: str, model: str | None, sha256: str | None, reason: str, config_path: Path | None) -> None:
    if "=" not in target:
        made = _with(config_path, lambda c: c.accept_proposal(target))
    else:
        if not model or not sha256:
            fail(UsageError("a block by label needs --model and --sha256 (or name a rollout that proposes one)"))
        made = _with(config_path, lambda c: c.block(_labels((target,)), model, sha256, reason))  # type: ignore[arg-type]
    where = ",".join(f"{k}={v}" for k, v in made.selector.items())
    click.echo(f"block {made.id}: {made.model} {made.sha256[:12]} refused on {where}; the signed notice goes out "
               f"at the controller's next step")


@fleet_app.command("unblock", help="Lift a block (the notice goes out again without it).")
@click.argument("block_id")
@config_option
def unblock(block_id: str, config_path: Path | None) -> None:
    _with(config_path, lambda c: c.unblock(block_id))
    click.echo(f"block {block_id} lifted")


def register(app: click.Group) -> None:
    app.add_command(fleet_app)
