"""Pure logic of the toolchain and dev clusters: versions file, cache keys, environments, configs."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from portal.infra import devcluster, toolchain

EXPECTED_TOOLS = {
    "pulumi",
    "pulumi-resource-kubernetes",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "kwokctl",
}


def test_versions_file_pins_every_tool_with_a_wrapper_module() -> None:
    tools = toolchain.load_tools()
    assert set(tools) == EXPECTED_TOOLS
    for tool in tools.values():
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tool.version), tool
        go_mod = (toolchain.TOOLCHAIN_SRC / tool.group / "go.mod").read_text()
        assert f"{tool.module} {tool.module_version}" in go_mod, tool.name
        assert (toolchain.TOOLCHAIN_SRC / tool.group / "go.sum").is_file()
        assert tool.version_args and re.compile(tool.version_regex)


def test_python_pins_match_the_binaries() -> None:
    tools = toolchain.load_tools()
    root = toolchain.TOOLCHAIN_SRC.parent
    pins = (root / "pyproject.toml").read_text()
    constraints = root / "constraints.txt"
    if constraints.is_file():
        pins += constraints.read_text()
    pins = pins.replace("_", "-")
    assert f"pulumi=={tools['pulumi'].version_bare}" in pins
    assert f"pulumi-kubernetes=={tools['pulumi-resource-kubernetes'].version_bare}" in pins


def test_kubernetes_binaries_get_version_ldflags() -> None:
    tool = toolchain.load_tools()["kube-apiserver"]
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in tool.ldflags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=36" in tool.ldflags
    assert all("{" not in flag for flag in tool.ldflags)


def test_pulumi_version_ldflag_and_tags() -> None:
    tool = toolchain.load_tools()["pulumi"]
    assert tool.ldflags == ("-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v3.259.0",)
    cmd = toolchain.go_build_command(tool, Path("/go/bin/go"), Path("/tmp/out"))
    assert cmd[cmd.index("-tags") + 1] == "osusergo,grpcnotrace"
    assert "-trimpath" in cmd and cmd[-1] == tool.package
    assert cmd[cmd.index("-o") + 1] == "/tmp/out"


def test_load_tools_expands_shared_ldflags(tmp_path: Path) -> None:
    versions = tmp_path / "versions.toml"
    versions.write_text(
        """
[tools.demo]
version = "v2.7.1"
group = "g"
module = "example.com/m"
module_version = "v2.7.1"
package = "example.com/m/cmd/demo"
ldflags = ["-X a.B={version_bare}"]
ldflags_set = "common"
version_args = ["--version"]
version_regex = '(\\S+)'
vars = { commit = "abc" }

[ldflags]
common = ["-X c.D={major}.{minor}", "-X e.F={commit}"]
"""
    )
    tool = toolchain.load_tools(versions)["demo"]
    assert tool.ldflags == ("-X a.B=2.7.1", "-X c.D=2.7", "-X e.F=abc")
    assert tomllib.loads(versions.read_text())["tools"]["demo"]["version"] == tool.version


def test_cache_key_includes_tool_and_go_versions() -> None:
    tool = toolchain.load_tools()["etcd"]
    assert toolchain.cache_key(tool, "go1.26.8") == "etcd-v3.6.16-go1.26.8"
    assert toolchain.cache_key(tool, "go1.26.8") != toolchain.cache_key(tool, "go1.27.0")


@pytest.mark.parametrize(
    ("reported", "pinned", "same"),
    [
        ("v1.36.3", "v1.36.3", True),
        ("3.6.16", "v3.6.16", True),
        ("v1.32.4-dispatcher", "v1.36.3", False),
        (None, "v1.0.0", False),
        ("", "v1.0.0", False),
    ],
)
def test_same_version(reported: str | None, pinned: str, same: bool) -> None:
    assert toolchain.same_version(reported, pinned) is same


@pytest.mark.parametrize(
    ("name", "output"),
    [
        ("pulumi", "v3.259.0\n"),
        ("pulumi-resource-kubernetes", "4.25.0\n"),
        ("etcd", "etcd Version: 3.6.16\nGit SHA: Not provided\nGo Version: go1.26.8\n"),
        ("kube-apiserver", "Kubernetes v1.36.3\n"),
        ("kubectl", "Client Version: v1.36.3\nKustomize Version: v5.8.0\n"),
        ("kwokctl", "kwokctl version v0.8.0 go1.26.8 (linux/amd64)\n"),
    ],
)
def test_version_regexes_read_real_outputs(name: str, output: str) -> None:
    tool = toolchain.load_tools()[name]
    match = re.search(tool.version_regex, output, re.MULTILINE)
    assert match and toolchain.same_version(match.group(1), tool.version)


def test_toolchain_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path))
    assert toolchain.toolchain_dir() == tmp_path
    assert toolchain.bin_dir() == tmp_path / "bin"
    assert toolchain.pulumi_root() / "bin" == toolchain.bin_dir()  # PulumiCommand(root=...) runs <root>/bin/pulumi
    monkeypatch.delenv("KAIDEN_TOOLCHAIN_DIR")
    assert toolchain.toolchain_dir() == Path.home() / ".cache" / "kaiden" / "toolchain"


def test_engine_env_puts_bin_first_and_disables_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path))
    env = toolchain.engine_env(
        {"PATH": "/usr/bin:/bin", "KEEP": "1"}, pulumi_home=tmp_path / "ph", install_plugins=False
    )
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")
    assert env["PATH"].endswith("/usr/bin:/bin")
    assert env["PULUMI_HOME"] == str(tmp_path / "ph")
    assert env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] == "true"
    assert env["PULUMI_SKIP_UPDATE_CHECK"] == "true"
    assert env["PULUMI_IGNORE_AMBIENT_PLUGINS"] == "true"
    assert env["KEEP"] == "1"
    default = toolchain.engine_env({}, install_plugins=False)
    assert default["PULUMI_HOME"] == str(toolchain.default_pulumi_home())


def test_go_env_is_local_and_readonly() -> None:
    env = toolchain.go_env({"GOFLAGS": "-mod=mod"})
    assert env["GOTOOLCHAIN"] == "local"
    assert "-mod=readonly" in env["GOFLAGS"]
    assert env["CGO_ENABLED"] == "0"


def test_unknown_tool_is_refused() -> None:
    with pytest.raises(toolchain.ToolchainError, match="unknown tool"):
        toolchain.build(["no-such-tool"])


def test_cluster_names_are_checked() -> None:
    for bad in ["", "Upper", "-x", "a" * 41, "a_b"]:
        with pytest.raises(devcluster.ClusterError):
            devcluster.delete_cluster(bad)


def test_log_file_is_cri_formatted(tmp_path: Path) -> None:
    path = devcluster.write_log_file(tmp_path / "c.log", lines=3)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z stdout F .* line 1", lines[0])


def test_kwok_config_points_logs_at_file(tmp_path: Path) -> None:
    config = devcluster.kwok_config(tmp_path / "c.log", tmp_path / "exec")
    assert "kind: ClusterLogs" in config and f"logsFile: {tmp_path / 'c.log'}" in config
    assert "kind: ClusterExec" in config


def test_cluster_env_uses_our_bin_and_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path / "tc"))
    env = devcluster.cluster_env(tmp_path / "kwok")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "tc" / "bin")
    assert env["KWOK_WORKDIR"] == str(tmp_path / "kwok")


def _fake_binary(path: Path, output: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_build_reuses_a_cached_binary_without_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path))
    monkeypatch.setattr(toolchain, "go_version", lambda go=None: "go1.99.0")
    monkeypatch.setattr(toolchain, "_build_one", lambda *a: pytest.fail("must not build"))
    tool = toolchain.load_tools()["kwokctl"]
    binary = _fake_binary(tmp_path / "kwokctl-v0.8.0-go1.99.0" / "kwokctl", "kwokctl version v0.8.0 go1.99.0")
    [result] = toolchain.build(["kwokctl"])
    assert (result.action, result.path, result.reported) == ("cached", binary, tool.version)
    assert (tmp_path / "bin" / "kwokctl").resolve() == binary
    assert not (tmp_path / "bin" / "kwokctl").readlink().is_absolute()


def test_build_uses_a_matching_binary_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path / "tc"))
    monkeypatch.setattr(toolchain, "go_version", lambda go=None: "go1.99.0")
    monkeypatch.setattr(toolchain, "_build_one", lambda *a: pytest.fail("must not build"))
    _fake_binary(tmp_path / "old" / "kubectl", "Client Version: v1.32.4-dispatcher")
    good = _fake_binary(tmp_path / "good" / "kubectl", "Client Version: v1.36.3")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "old"), str(tmp_path / "good"), "/usr/bin:/bin"]))
    [result] = toolchain.build(["kubectl"])
    assert (result.action, result.path) == ("path", good)
    assert (tmp_path / "tc" / "bin" / "kubectl").resolve() == good


def test_build_without_go_keeps_bin_or_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAIDEN_TOOLCHAIN_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(toolchain, "find_go", lambda: None)
    _fake_binary(tmp_path / "bin" / "etcd", "etcd Version: 3.6.16")
    [result] = toolchain.build(["etcd"])
    assert result.action == "cached"
    with pytest.raises(toolchain.ToolchainError, match="no Go toolchain"):
        toolchain.build(["kwok"])
