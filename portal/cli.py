"""The `kaiden` command: Flask's CLI group around `create_app`, plus the platform's own commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from portal import create_app, database_of, settings_of


def _make_app():
    return create_app()


@click.group(cls=FlaskGroup, create_app=_make_app, add_default_commands=False, add_version_option=False)
def main() -> None:
    """Kaiden: Helm-chart cloud services and audited remote support, driven by Pulumi."""


# ---------------------------------------------------------------- processes


@main.command("portal")
@click.option("--host", default=None, help="Bind address (default: KAIDEN_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: KAIDEN_PORT).")
@with_appcontext
def portal_command(host: str | None, port: int | None) -> None:
    """Serve the portal (pages + REST API) with a production WSGI server."""
    from waitress import serve

    settings = settings_of(current_app)
    host = host or settings.host
    port = port or settings.port
    click.echo(f"Kaiden portal on http://{host}:{port}/")
    serve(current_app._get_current_object(), host=host, port=port, threads=8, ident="kaiden")


@main.command("worker")
@click.option("--burst", is_flag=True, help="Run queued jobs, then exit.")
@with_appcontext
def worker_command(burst: bool) -> None:
    """Run an RQ worker for background operations (Pulumi, Ansible, backups)."""
    from portal.jobs.worker import run_worker

    run_worker(settings_of(current_app), burst=burst)


@main.command("gateway")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None, help="Port (default: KAIDEN_GATEWAY_PORT).")
@with_appcontext
def gateway_command(host: str | None, port: int | None) -> None:
    """Run the asyncio gateway for long-lived connections (agents, terminals, live streams)."""
    from portal.gateway import run_gateway

    settings = settings_of(current_app)
    run_gateway(settings, host=host or settings.host, port=port or settings.gateway_port)


@main.command("up")
@click.option("--host", default=None, help="Bind address (default: KAIDEN_HOST).")
@click.option("--port", type=int, default=None, help="Portal port (default: KAIDEN_PORT).")
@click.option(
    "--cluster/--no-cluster",
    "with_cluster",
    default=True,
    show_default=True,
    help="Start the local simulated cluster services deploy to (ignored when KAIDEN_KUBECONFIG is set).",
)
@with_appcontext
def up_command(host: str | None, port: int | None, with_cluster: bool) -> None:
    """All in one: first-run setup, embedded Redis, the local cluster, a worker, the gateway and the portal."""
    from waitress import serve

    from portal import bootstrap, queue

    settings = settings_of(current_app)
    _hold_data_dir_lock(settings.home)
    report = bootstrap.initialize(current_app)
    for line in report:
        click.echo(line)

    env = dict(os.environ)
    env["KAIDEN_HOME"] = str(settings.home)
    env["KAIDEN_REDIS_URL"] = queue.redis_url(settings)
    click.echo(f"redis: {env['KAIDEN_REDIS_URL']}")
    env["KAIDEN_DATABASE_URL"] = settings.database_url
    cluster_root = None
    if settings.kubeconfig:
        click.echo(f"services deploy to the cluster of {settings.kubeconfig}")
    elif with_cluster:
        cluster_root = settings.home / "kwok"
        env["KAIDEN_KUBECONFIG"] = str(_start_local_cluster(cluster_root))
    else:
        click.echo("no cluster: deploying services will fail until KAIDEN_KUBECONFIG is set")
    children = [
        subprocess.Popen([sys.executable, "-m", "portal.cli", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "portal.cli", "gateway"], env=env),
    ]

    def _stop(*_args: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    host = host or settings.host
    port = port or settings.port
    click.echo(f"Kaiden is up: http://{host}:{port}/  (data in {settings.home}; Ctrl-C stops)")
    try:
        serve(current_app._get_current_object(), host=host, port=port, threads=8, ident="kaiden")
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        queue.shutdown_embedded()
        if cluster_root is not None:
            from portal.infra import devcluster

            devcluster.stop_cluster(LOCAL_CLUSTER, root=cluster_root)


LOCAL_CLUSTER = "kaiden-local"
LOCAL_CLUSTER_NODES = 2


def _start_local_cluster(root: Path) -> Path:
    """Build the toolchain if needed (first run only: ~30 min on 2 cores), start the cluster; its kubeconfig."""
    from portal.infra import devcluster, toolchain

    missing = [s.name for s in toolchain.status() if s.state not in ("cached", "path")]
    if missing:
        click.echo(f"toolchain: building {', '.join(missing)} from Go modules (first run only; cached after)")
    try:
        toolchain.build(progress_callback=lambda name, message: click.echo(f"toolchain: {name}: {message}"))
        click.echo(f"cluster: starting {LOCAL_CLUSTER} ({LOCAL_CLUSTER_NODES} simulated nodes)")
        cluster = devcluster.create_cluster(LOCAL_CLUSTER, nodes=LOCAL_CLUSTER_NODES, root=root)
    except toolchain.ToolchainError as exc:
        raise click.ClickException(f"local cluster: {exc} (use --no-cluster to run without one)") from exc
    click.echo(f"cluster: {cluster.name} at {cluster.server} (kubeconfig {cluster.kubeconfig})")
    return cluster.kubeconfig


def _hold_data_dir_lock(home: Path) -> None:
    """One `kaiden up` per data dir: a second one would share (and on exit stop) the embedded Redis."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / "up.lock", "w")  # held until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise click.ClickException(f"another `kaiden up` is already running on {home}") from None
    _held_locks.append(handle)


_held_locks: list = []


# ---------------------------------------------------------------- database


@main.group("db")
def db_group() -> None:
    """Schema migrations."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from portal import migrations

    migrations.upgrade(settings_of(current_app), revision)
    click.echo(f"database at {migrations.current(settings_of(current_app))}")


@db_group.command("downgrade")
@click.argument("revision", default="base")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (default: base, i.e. empty)."""
    from portal import migrations

    migrations.downgrade(settings_of(current_app), revision)
    click.echo(f"database at {migrations.current(settings_of(current_app)) or 'base'}")


@db_group.command("current")
@with_appcontext
def db_current() -> None:
    """Print the schema revision."""
    from portal import migrations

    click.echo(migrations.current(settings_of(current_app)) or "base")


# ---------------------------------------------------------------- users, catalog, demo


@main.group("users")
def users_group() -> None:
    """Manage users."""


@users_group.command("create-admin")
@click.option("--email", required=True)
@click.option("--name", default="Administrator", show_default=True)
@click.option("--password", envvar="KAIDEN_ADMIN_PASSWORD", default=None, help="Prompted when not given.")
@with_appcontext
def users_create_admin(email: str, name: str, password: str | None) -> None:
    """Create a platform administrator."""
    from portal.errors import KaidenError
    from portal.services.identity import create_admin

    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with database_of(current_app).session() as session:
            user = create_admin(session, email=email, name=name, password=password)
            click.echo(f"created admin {user.email} (id {user.id})")
    except KaidenError as exc:
        _fail(exc)


@main.group("catalog")
def catalog_group() -> None:
    """App template catalog."""


@catalog_group.command("load")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False), required=False)
@with_appcontext
def catalog_load(directory: Path | None) -> None:
    """Validate and upsert catalog/<slug>.yaml templates; templates whose file is gone are deactivated."""
    from portal.catalog import default_catalog_dir, load_catalog
    from portal.errors import KaidenError

    try:
        with database_of(current_app).session() as session:
            result = load_catalog(session, directory or default_catalog_dir())
    except KaidenError as exc:
        _fail(exc)
    click.echo(result.summary())


@catalog_group.command("package")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output folder.")
@click.option(
    "--charts",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Chart folder (default: catalog/charts).",
)
@click.option("--base-url", default="", help="Absolute URL the archives will be served from (default: relative).")
def catalog_package(out: Path, charts: Path | None, base_url: str) -> None:
    """Write our Helm charts as a chart repository: index.yaml and <name>-<version>.tgz."""
    from portal.chartrepo import write_repository
    from portal.errors import KaidenError

    try:
        written = write_repository(out, charts, base_url)
    except KaidenError as exc:
        _fail(exc)
    for path in written:
        click.echo(str(path))


@main.group("demo")
def demo_group() -> None:
    """Demo data."""


@demo_group.command("seed")
@with_appcontext
def demo_seed() -> None:
    """Create the demo customer, workspace, engineer and customer user (idempotent)."""
    from portal.demo import seed_demo

    with database_of(current_app).session() as session:
        for line in seed_demo(session):
            click.echo(line)


def _fail(exc: Exception) -> None:
    fields = getattr(exc, "fields", None) or {}
    detail = "".join(f"\n  {name}: {message}" for name, message in fields.items())
    raise click.ClickException(f"{exc}{detail}")


def _register_infra_commands() -> None:
    # The toolchain and dev-cluster commands must work before the app is configured.
    from portal.infra.devcluster import dev_cli
    from portal.infra.toolchain import toolchain_cli

    main.add_command(toolchain_cli)
    main.add_command(dev_cli)


_register_infra_commands()


if __name__ == "__main__":
    main()
