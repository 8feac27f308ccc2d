"""The pinned Go toolchain (Pulumi CLI, Kubernetes provider, control plane, kwok): build, cache, env.

Versions live in toolchain/versions.toml; binaries are cached outside the repo (see docs/toolchain.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

TOOLCHAIN_SRC = Path(__file__).resolve().parents[2] / "toolchain"
VERSIONS_FILE = TOOLCHAIN_SRC / "versions.toml"
PROVIDER_TOOL = "pulumi-resource-kubernetes"
# The sum database here lacks the provider's pseudo-version and some of its pulumi deps; go.sum pins them.
GONOSUMDB = "github.com/pulumi"
VERSION_TIMEOUT = 30

ProgressCallback = Callable[[str, str], None]


class ToolchainError(RuntimeError):
    """A pinned binary could not be built, found or run."""


@dataclass(frozen=True)
class Tool:
    """One pinned binary, as described in versions.toml."""

    name: str
    version: str
    group: str
    module: str
    module_version: str
    package: str
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    version_args: tuple[str, ...] = ()
    version_regex: str = ""
    generate: str = ""

    @property
    def version_bare(self) -> str:
        return self.version.removeprefix("v")


@dataclass(frozen=True)
class BuildResult:
    """What `build` did for one binary: action is "cached", "path" (found on PATH) or "built"."""

    name: str
    version: str
    reported: str
    path: Path
    action: str
    seconds: float = 0.0


@dataclass(frozen=True)
class ToolStatus:
    """Where a binary stands: state is "cached", "path", "missing" or "wrong-version"."""

    name: str
    version: str
    reported: str | None
    path: Path | None
    state: str
    notes: list[str] = field(default_factory=list)


# --- configuration -------------------------------------------------------------------------


def toolchain_dir() -> Path:
    """Cache root: $KAIDEN_TOOLCHAIN_DIR, else ~/.cache/kaiden/toolchain."""
    configured = os.environ.get("KAIDEN_TOOLCHAIN_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "kaiden" / "toolchain"


def bin_dir() -> Path:
    """Directory of symlinks to the current set of pinned binaries (put it first on PATH)."""
    return toolchain_dir() / "bin"


def pulumi_root() -> Path:
    """Root for the Automation API's `PulumiCommand(root=...)`, which runs `<root>/bin/pulumi`."""
    return toolchain_dir()


def default_pulumi_home() -> Path:
    """The private PULUMI_HOME used when the caller names none."""
    return toolchain_dir() / "pulumi-home"


def _format(template: str, tool_version: str, extra: Mapping[str, str]) -> str:
    bare = tool_version.removeprefix("v")
    parts = bare.split(".")
    values = {"version": tool_version, "version_bare": bare, "major": parts[0], "minor": parts[1], **extra}
    return template.format(**values)


def load_tools(path: Path | None = None) -> dict[str, Tool]:
    """Read versions.toml into Tool records, in file order, with ldflags templates expanded."""
    data = tomllib.loads((path or VERSIONS_FILE).read_text())
    shared = data.get("ldflags", {})
    tools: dict[str, Tool] = {}
    for name, spec in data["tools"].items():
        templates = list(spec.get("ldflags", []))
        if spec.get("ldflags_set"):
            templates += shared[spec["ldflags_set"]]
        extra = {k: str(v) for k, v in spec.get("vars", {}).items()}
        tools[name] = Tool(
            name=name,
            version=spec["version"],
            group=spec["group"],
            module=spec["module"],
            module_version=spec["module_version"],
            package=spec["package"],
            ldflags=tuple(_format(t, spec["version"], extra) for t in templates),
            tags=tuple(spec.get("tags", [])),
            version_args=tuple(spec.get("version_args", [])),
            version_regex=spec.get("version_regex", ""),
            generate=spec.get("generate", ""),
        )
    return tools


def find_go() -> Path | None:
    """The `go` binary that builds use (PATH, then /usr/local/go)."""
    found = shutil.which("go") or (shutil.which("go", path="/usr/local/go/bin"))
    return Path(found) if found else None


def go_version(go: Path | None = None) -> str | None:
    """The Go version, e.g. "go1.26.8", read from GOROOT/VERSION so no `go` process is started."""
    go = go or find_go()
    if go is None:
        return None
    version_file = go.resolve().parent.parent / "VERSION"
    with contextlib.suppress(OSError):
        first = version_file.read_text().splitlines()[0].strip()
        if first.startswith("go"):
            return first
    proc = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


def cache_key(tool: Tool, go: str) -> str:
    """Directory name of one cached build, keyed by tool version and Go version."""
    return f"{tool.name}-{tool.version}-{go}"


def same_version(reported: str | None, pinned: str) -> bool:
    """True when a reported version is the pinned one (a leading "v" is ignored)."""
    if not reported:
        return False
    return reported.removeprefix("v") == pinned.removeprefix("v")


# --- asking a binary its version -----------------------------------------------------------


def reported_version(tool: Tool, path: Path) -> str | None:
    """The version a binary reports when run with its version arguments."""
    try:
        proc = subprocess.run(
            [str(path), *tool.version_args],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            check=False,
            env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(tool.version_regex, proc.stdout + proc.stderr, re.MULTILINE)
    return match.group(1) if match else None


# --- building --------------------------------------------------------------------------------


def go_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for `go` invocations: local toolchain only, pinned go.sum, 2-core friendly."""
    env = dict(os.environ if base is None else base)
    env.update(
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=readonly -buildvcs=false",
        CGO_ENABLED="0",
        GOMAXPROCS=env.get("KAIDEN_BUILD_JOBS", "2"),
        GONOSUMDB=GONOSUMDB,
    )
    return env


def go_build_command(tool: Tool, go: Path, output: Path) -> list[str]:
    """The `go build` command line for one tool (run inside toolchain/<group>)."""
    jobs = os.environ.get("KAIDEN_BUILD_JOBS", "2")
    cmd = [str(go), "build", "-p", jobs, "-trimpath"]
    if tool.tags:
        cmd += ["-tags", ",".join(tool.tags)]
    cmd += ["-ldflags", " ".join(["-s", "-w", *tool.ldflags]), "-o", str(output), tool.package]
    nice = shutil.which("nice")
    return [nice, "-n", "10", *cmd] if nice else cmd


def _run_go(args: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, cwd=cwd, env=go_env(), stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ToolchainError(f"{' '.join(args[:4])}… failed (exit {proc.returncode}); log {log}:\n{tail}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def generate_provider_embeds(tool: Tool, go: Path, log: Path) -> None:
    """Write the provider's embedded schema (version set) and Terraform mapping from the module cache."""
    group_dir = TOOLCHAIN_SRC / tool.group
    _run_go([str(go), "mod", "download", tool.module], group_dir, log)
    proc = subprocess.run(
        [str(go), "list", "-m", "-f", "{{.Dir}}", tool.module],
        cwd=group_dir,
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    module_dir = Path(proc.stdout.strip())
    source = module_dir / "cmd" / "pulumi-resource-kubernetes"
    if proc.returncode != 0 or not (source / "schema.json").is_file():
        raise ToolchainError(f"provider schema not found in module cache ({proc.stderr.strip() or source})")
    schema = json.loads((source / "schema.json").read_text())
    if not schema.get("resources"):
        raise ToolchainError("provider schema.json has no resources; refusing to embed an empty schema")
    schema["version"] = tool.version_bare
    mapping = json.loads((source / "terraform-mapping.json").read_text())
    out_dir = group_dir / "generated"
    out_dir.mkdir(exist_ok=True)
    _write_atomic(out_dir / "schema-embed.json", json.dumps(schema, separators=(",", ":")).encode())
    _write_atomic(out_dir / "terraform-mapping-embed.json", json.dumps(mapping, separators=(",", ":")).encode())


def _build_one(tool: Tool, go: Path, entry: Path, log: Path) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    if tool.generate == "pulumi-kubernetes-schema":
        generate_provider_embeds(tool, go, log)
    tmp = entry / f".{tool.name}.{os.getpid()}.tmp"
    try:
        _run_go(go_build_command(tool, go, tmp), TOOLCHAIN_SRC / tool.group, log)
        os.replace(tmp, entry / tool.name)  # a killed build never leaves a half binary in place
    finally:
        tmp.unlink(missing_ok=True)


def _link(name: str, target: Path) -> None:
    links = bin_dir()
    links.mkdir(parents=True, exist_ok=True)
    tmp = links / f".{name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    # relative inside the cache, so the cache dir can move; absolute for a binary found on PATH
    inside = target.resolve().is_relative_to(toolchain_dir().resolve())
    tmp.symlink_to(os.path.relpath(target, links) if inside else target)
    os.replace(tmp, links / name)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    root = toolchain_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _on_path(tool: Tool) -> tuple[Path, str] | None:
    """A binary of this name elsewhere on PATH that reports the pinned version."""
    ours = {bin_dir().resolve(), bin_dir()}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or Path(directory) in ours or Path(directory).resolve() in ours:
            continue
        candidate = Path(directory) / tool.name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            reported = reported_version(tool, candidate)
            if same_version(reported, tool.version):
                return candidate, reported or ""
    return None


def _select(tools: Mapping[str, Tool], names: Sequence[str] | None) -> list[Tool]:
    if not names:
        return list(tools.values())
    unknown = [n for n in names if n not in tools]
    if unknown:
        raise ToolchainError(f"unknown tool(s): {', '.join(unknown)}; known: {', '.join(tools)}")
    return [tools[n] for n in names]


def build(
    names: Sequence[str] | None = None,
    force: bool = False,
    progress_callback: ProgressCallback | None = None,
) -> list[BuildResult]:
    """Ensure the pinned binaries exist (cached, on PATH, or built now, one at a time)."""
    tools = _select(load_tools(), names)
    go = find_go()
    go_ver = go_version(go) if go else None
    notify = progress_callback or (lambda _name, _message: None)
    results: list[BuildResult] = []
    with _locked():
        logs = toolchain_dir() / "logs"
        for tool in tools:
            if go_ver is None:  # no Go here (e.g. a copied cache): keep what bin/ has, or use PATH
                current = bin_dir() / tool.name
                reported = reported_version(tool, current) if current.exists() else None
                if same_version(reported, tool.version):
                    results.append(BuildResult(tool.name, tool.version, reported or "", current.resolve(), "cached"))
                    continue
                found = _on_path(tool)
                if found is None:
                    raise ToolchainError(f"{tool.name}: no Go toolchain to build it and none on PATH")
                _link(tool.name, found[0])
                results.append(BuildResult(tool.name, tool.version, found[1], found[0], "path"))
                continue
            entry = toolchain_dir() / cache_key(tool, go_ver)
            binary = entry / tool.name
            if not force and binary.is_file():
                reported = reported_version(tool, binary)
                if same_version(reported, tool.version):
                    _link(tool.name, binary)
                    results.append(BuildResult(tool.name, tool.version, reported or "", binary, "cached"))
                    notify(tool.name, f"cached {tool.version} at {binary}")
                    continue
            if not force and (found := _on_path(tool)):
                _link(tool.name, found[0])
                results.append(BuildResult(tool.name, tool.version, found[1], found[0], "path"))
                notify(tool.name, f"using {found[0]} ({found[1]}) from PATH")
                continue
            assert go is not None
            logs.mkdir(parents=True, exist_ok=True)
            log = logs / f"{cache_key(tool, go_ver)}.log"
            log.write_text("")
            notify(tool.name, f"building {tool.version} with {go_ver} (log {log})")
            started = time.monotonic()
            _build_one(tool, go, entry, log)
            seconds = time.monotonic() - started
            reported = reported_version(tool, binary)
            if not same_version(reported, tool.version):
                raise ToolchainError(f"{tool.name}: built binary reports {reported!r}, pinned {tool.version}")
            _link(tool.name, binary)
            results.append(BuildResult(tool.name, tool.version, reported or "", binary, "built", seconds))
            notify(tool.name, f"built {tool.version} in {seconds:.1f}s")
    return results


def status() -> list[ToolStatus]:
    """Each pinned binary: where it is and what version it reports. Never builds."""
    go_ver = go_version()
    statuses = []
    for tool in load_tools().values():
        binary = toolchain_dir() / cache_key(tool, go_ver) / tool.name if go_ver else None
        if binary is not None and binary.is_file():
            reported = reported_version(tool, binary)
            state = "cached" if same_version(reported, tool.version) else "wrong-version"
            statuses.append(ToolStatus(tool.name, tool.version, reported, binary, state))
            continue
        link = bin_dir() / tool.name
        if link.exists():
            reported = reported_version(tool, link)
            state = "path" if same_version(reported, tool.version) else "wrong-version"
            statuses.append(ToolStatus(tool.name, tool.version, reported, link.resolve(), state))
            continue
        statuses.append(ToolStatus(tool.name, tool.version, None, None, "missing"))
    return statuses


def tool_path(name: str) -> Path:
    """Path of one pinned binary in the bin dir; raises ToolchainError when it is not there."""
    path = bin_dir() / name
    if not path.exists():
        raise ToolchainError(f"{name} is not built; run `kaiden toolchain build`")
    return path


# --- the environment of every engine run ----------------------------------------------------


def engine_env(
    base_env: Mapping[str, str] | None = None,
    pulumi_home: Path | str | None = None,
    install_plugins: bool = True,
) -> dict[str, str]:
    """Environment for Pulumi runs: our bin dir first on PATH, private PULUMI_HOME, nothing fetched."""
    env = dict(os.environ if base_env is None else base_env)
    home = Path(pulumi_home) if pulumi_home else default_pulumi_home()
    path = env.get("PATH", os.defpath)
    env["PATH"] = os.pathsep.join([str(bin_dir()), path]) if path else str(bin_dir())
    env.update(
        PULUMI_HOME=str(home),
        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
        # use the version-matched plugin installed in PULUMI_HOME, not the one on PATH ("ambient"),
        # which the engine would take for any requested version and warn about on every run
        PULUMI_IGNORE_AMBIENT_PLUGINS="true",
        PULUMI_SKIP_UPDATE_CHECK="true",
        PULUMI_SKIP_CONFIRMATIONS="true",
        PULUMI_DISABLE_REGISTRY_RESOLVE="true",
        PULUMI_DIY_BACKEND_NO_LEGACY_WARNING="true",
    )
    if install_plugins:
        install_provider_plugin(home, env)
    return env


def provider_plugin_dir(pulumi_home: Path) -> Path:
    """Where `pulumi plugin install` puts the pinned Kubernetes provider inside a PULUMI_HOME."""
    tool = load_tools()[PROVIDER_TOOL]
    return pulumi_home / "plugins" / f"resource-kubernetes-{tool.version}"


def install_provider_plugin(pulumi_home: Path, env: Mapping[str, str] | None = None) -> Path:
    """Install our provider binary into PULUMI_HOME (no download); a no-op when already there."""
    tool = load_tools()[PROVIDER_TOOL]
    target = provider_plugin_dir(pulumi_home)
    if (target / PROVIDER_TOOL).is_file() and not target.with_name(target.name + ".partial").exists():
        return target
    pulumi = tool_path("pulumi")
    provider = tool_path(PROVIDER_TOOL).resolve()
    pulumi_home.mkdir(parents=True, exist_ok=True)
    run_env = dict(env or engine_env(pulumi_home=pulumi_home, install_plugins=False))
    run_env["PULUMI_HOME"] = str(pulumi_home)
    proc = subprocess.run(
        [str(pulumi), "plugin", "install", "resource", "kubernetes", tool.version, "--file", str(provider)],
        env=run_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not (target / PROVIDER_TOOL).is_file():
        raise ToolchainError(f"pulumi plugin install failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return target


# --- command line ------------------------------------------------------------------------------


@click.group("toolchain")
def toolchain_cli() -> None:
    """Build and inspect the pinned Go toolchain (Pulumi, Kubernetes, kwok)."""


@toolchain_cli.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when a cached binary reports the pinned version.")
@click.argument("names", nargs=-1)
def build_command(force: bool, names: tuple[str, ...]) -> None:
    """Build (or reuse) the pinned binaries; NAMES limits it to some of them."""
    started = time.monotonic()

    def progress_handler(name: str, message: str) -> None:
        click.echo(f"{name:28} {message}", err=False)

    try:
        results = build(list(names) or None, force=force, progress_callback=progress_handler)
    except ToolchainError as exc:
        raise click.ClickException(str(exc)) from exc
    built = [r for r in results if r.action == "built"]
    total = time.monotonic() - started
    summary = f"{len(results)} binaries ready in {bin_dir()} ({len(built)} built"
    if built:
        summary += ", build time " + ", ".join(f"{r.name} {r.seconds:.0f}s" for r in built)
    click.echo(f"{summary}); total {total:.1f}s")


@toolchain_cli.command("status")
def status_command() -> None:
    """Print each binary, its pinned and reported version, path and state."""
    rows = status()
    for row in rows:
        click.echo(f"{row.name:28} {row.version:9} {row.reported or '-':14} {row.state:13} {row.path or '-'}")
    if any(row.state != "cached" and row.state != "path" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    toolchain_cli()
