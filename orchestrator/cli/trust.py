"""``orchestrate keygen``, ``sign`` and ``fetch``: the commands around package trust and delivery.

Added to the main application by ``register(app)``; ``orchestrator.cli.main`` is imported only
when a command runs, because ``cli.py`` is the module that calls ``register``.

``sign`` takes a package folder or a ``.tar.gz``; an archive is rewritten in place with
``meta.yaml.sig`` added beside its ``meta.yaml`` (the other members unchanged).
``fetch`` downloads into ``<state_dir>/downloads/`` (a dropped transfer resumes on the next
``fetch`` of the same URL), imports the file, and deletes it once it is filed or refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import orchestrator_of, run
from orchestrator.core.versions import label
from orchestrator.errors import PackageRejected, UsageError

if TYPE_CHECKING:
    from orchestrator.usecases.context import ImportResult

DOWNLOADS = "downloads"
# delivery.fetch's defaults, repeated so that `--help` needs no requests (tests/unit/test_cli_startup.py
# checks they agree); cryptography and requests are imported by the command that uses them.
DEFAULT_TIMEOUT_S = 30.0
MAX_DOWNLOAD_BYTES = 16 << 30


PATH = click.Path(path_type=Path)


@click.command("keygen")
@click.option("--out", type=PATH, required=True, help="Folder for NAME.key and NAME.pub")
@click.option("--name", default="signing", help="File name of the key pair")
def keygen(out: Path, name: str) -> None:
    """Create an Ed25519 signing key pair (NAME.key stays on the build machine, NAME.pub goes to devices)."""
    from orchestrator.delivery.signing import PRIVATE_SUFFIX, PUBLIC_SUFFIX, generate_keypair  # noqa: PLC0415
    from orchestrator.delivery.trust import ENV_TRUSTED_KEYS  # noqa: PLC0415

    def create() -> str:
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"--name {name!r} must be a plain file name")
        out.mkdir(parents=True, exist_ok=True)
        return generate_keypair(out / (name + PRIVATE_SUFFIX), out / (name + PUBLIC_SUFFIX))

    key = run(create)
    click.echo(f"key {key}: private {out / (name + PRIVATE_SUFFIX)} (keep it secret), public "
               f"{out / (name + PUBLIC_SUFFIX)}")
    public = name + PUBLIC_SUFFIX
    click.echo(f"trust it where it is checked (one key per role: never reuse a package key to sign plans): "
               f"a package key: {public} into each device's trusted keys folder ({ENV_TRUSTED_KEYS}, default "
               f"<state_dir>/trusted_keys); a release key: into the controller's release_keys folder; a "
               f"controller key: into each device's fleet.yaml controller_keys folder", err=True)


@click.command("sign")
@click.argument("package", type=PATH)
@click.option("--key", type=PATH, required=True, help="Private key file written by `orchestrate keygen`")
def sign(package: Path, key: Path) -> None:
    """Sign a package's meta.yaml (writes meta.yaml.sig; an archive is rewritten with it).

    PACKAGE is a package folder or .tar.gz."""
    from orchestrator.delivery.signing import sign_archive, sign_package  # noqa: PLC0415 - cryptography

    def signed() -> str:
        if package.is_dir():
            return sign_package(package, key)
        if package.is_file():
            return sign_archive(package, key)
        raise UsageError(f"{package} is not a package folder or archive")

    click.echo(f"{package}: signed by key {run(signed)}")


@click.command("fetch")
@click.argument("url")
@click.option("--sha256", metavar="HEX", help="Expected sha256 of the file [default: URL.sha256 when the server "
              "has one]")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
              help="Seconds to wait to connect and for each piece of data")
@click.option("--max-bytes", type=click.IntRange(min=1), default=MAX_DOWNLOAD_BYTES,
              help="Refuse a file larger than this")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line")
@click.pass_context
def fetch_(ctx: click.Context, url: str, sha256: str | None, timeout: float, max_bytes: int, as_json: bool) -> None:
    """Download a package (resuming an interrupted download), check its sha256, and import it.

    URL is the http(s) URL of a package .tar.gz."""
    from orchestrator.delivery.fetch import fetch  # noqa: PLC0415 - requests

    orch = orchestrator_of(ctx)
    assert orch.settings.state_dir is not None  # Settings fills it in
    downloads = orch.settings.state_dir / DOWNLOADS
    path = run(lambda: fetch(url, downloads, sha256, timeout, max_bytes))

    def file_it() -> ImportResult:
        try:
            result = orch.import_package(path)
        except PackageRejected:
            path.unlink(missing_ok=True)  # refused for good (and journaled): keep no copy around
            raise
        path.unlink(missing_ok=True)  # filed: the repository holds the artifacts now
        return result

    result = run(file_it)
    if as_json:
        click.echo(json.dumps({"model": result.model, "version": result.version, "artifacts": result.artifacts,
                               "url": url}, indent=2))
    else:
        click.echo(f"{result.model}: filed {label(result.version)} from {url} "
                   f"({len(result.artifacts)} artifacts verified)")


def register(app: click.Group) -> None:
    """Add ``keygen``, ``sign`` and ``fetch`` to ``app``."""
    for command in (keygen, sign, fetch_):
        app.add_command(command)
