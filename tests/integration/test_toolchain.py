"""The built toolchain: every binary reports its pinned version, warm builds never run go, plugins install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from portal.infra import toolchain as toolchain_module

pytestmark = pytest.mark.integration


def test_every_binary_reports_its_pinned_version(toolchain: Path) -> None:
    rows = toolchain_module.status()
    assert {row.name for row in rows} == set(toolchain_module.load_tools())
    for row in rows:
        assert row.state in {"cached", "path"}, row
        assert toolchain_module.same_version(row.reported, row.version), row
        assert (toolchain / row.name).resolve() == row.path.resolve()


def test_binaries_answer_their_own_version_commands(toolchain: Path) -> None:
    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout

    assert run(str(toolchain / "pulumi"), "version").strip() == "v3.259.0"
    assert "Client Version: v1.36.3" in run(str(toolchain / "kubectl"), "version", "--client")
    assert run(str(toolchain / "kube-apiserver"), "--version").strip() == "Kubernetes v1.36.3"
    assert "etcd Version: 3.6.16" in run(str(toolchain / "etcd"), "--version")
    assert "v0.8.0" in run(str(toolchain / "kwokctl"), "--version")


def test_warm_build_runs_no_go(toolchain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_go(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"go was invoked on a warm build: {args}")

    monkeypatch.setattr(toolchain_module, "_run_go", no_go)
    monkeypatch.setattr(toolchain_module, "_build_one", no_go)
    messages: list[str] = []
    results = toolchain_module.build(progress_callback=lambda name, message: messages.append(f"{name} {message}"))
    assert len(results) == len(toolchain_module.load_tools())
    assert {r.action for r in results} <= {"cached", "path"}
    assert all(r.seconds == 0 for r in results)
    assert messages


def test_cli_status_and_warm_build(toolchain: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(toolchain_module.toolchain_cli, ["status"])
    assert status.exit_code == 0, status.output
    assert "kube-apiserver" in status.output and "v1.36.3" in status.output
    build = runner.invoke(toolchain_module.toolchain_cli, ["build", "kwokctl", "etcd"])
    assert build.exit_code == 0, build.output
    assert "0 built" in build.output


def test_provider_plugin_installs_offline_with_full_schema(toolchain: Path, tmp_path: Path) -> None:
    home = tmp_path / "pulumi-home"
    env = toolchain_module.engine_env(pulumi_home=home)
    plugin_dir = toolchain_module.provider_plugin_dir(home)
    assert (plugin_dir / "pulumi-resource-kubernetes").is_file()
    listing = subprocess.run(
        ["pulumi", "plugin", "ls", "--json"], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    plugins = json.loads(listing.stdout)
    assert {(p["name"], p["version"]) for p in plugins} >= {("kubernetes", "4.25.0")}
    schema = subprocess.run(
        ["pulumi", "package", "get-schema", str(plugin_dir / "pulumi-resource-kubernetes")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    spec = json.loads(schema.stdout)
    assert spec["name"] == "kubernetes" and spec["version"] == "4.25.0"
    assert "kubernetes:apps/v1:Deployment" in spec["resources"]
    assert "kubernetes:helm.sh/v3:Release" in spec["resources"]
    # installing again is a no-op
    assert toolchain_module.install_provider_plugin(home) == plugin_dir
