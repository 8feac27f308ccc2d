"""bootstrap-node.yml run for real on this machine, confined to a scratch root (`agent_root`) with systemd
left alone (`manage_service: false`): venv + package from a local wheel, 0600 config, unit file, idempotent."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from portal.infra import runner

pytestmark = pytest.mark.integration

KEY = "kdc_bootstrap-test-key-0123456789"


def _stub_wheel(directory: Path) -> Path:
    """A minimal wheel providing `agent` (stands in for the real package; installs with --no-index)."""
    name = "kaiden_agent_stub-0.0.1"
    files = {
        "agent/__init__.py": "",
        "agent/agent.py": "print('stub agent')\n",
        f"{name}.dist-info/METADATA": "Metadata-Version: 2.1\nName: kaiden-agent-stub\nVersion: 0.0.1\n",
        f"{name}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: kaiden-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(content.encode())}")
    record.append(f"{name}.dist-info/RECORD,,")
    wheel = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
        archive.writestr(f"{name}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def _run(variables: dict, *, check: bool = False) -> runner.PlaybookResult:
    with runner.private_dir() as workdir:
        return runner.run_playbook(
            "bootstrap-node.yml", workdir=workdir, extravars=variables, secrets=[KEY], check=check
        )


def test_bootstrap_node_into_a_scratch_root(tmp_path):
    root = tmp_path / "root"
    variables = {
        "agent_root": str(root),
        "manage_service": False,
        "controller_url": "ws://10.0.0.5:7070/agent",
        "api_key": KEY,
        "node_name": "edge-7",
        "agent_package": str(_stub_wheel(tmp_path)),
        "agent_pip_extra_args": "--no-index",
    }
    dry = _run(variables, check=True)
    assert dry.ok, dry.failure
    assert not (root / "etc/kaiden/agent.env").exists()  # --check wrote nothing

    first = _run(variables)
    assert first.ok, first.failure
    assert first.stats.get("changed", 0) >= 3
    env_file = root / "etc/kaiden/agent.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/kaiden").stat().st_mode & 0o777 == 0o700
    config = env_file.read_text()
    assert "NODE_NAME=edge-7\n" in config and f"API_KEY={KEY}\n" in config
    assert "CONTROLLER_URL=ws://10.0.0.5:7070/agent\n" in config
    unit = (root / "etc/systemd/system/kaiden-agent.service").read_text()
    assert "ExecStart=/opt/kaiden/agent/bin/python -m agent.agent" in unit
    assert "EnvironmentFile=/etc/kaiden/agent.env" in unit
    python = root / "opt/kaiden/agent/bin/python"
    found = subprocess.run(
        [str(python), "-c", "import agent.agent"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert found.returncode == 0 and "stub agent" in found.stdout

    second = _run(variables)
    assert second.ok, second.failure
    assert second.stats.get("changed", 0) == 0

    refused = _run({**variables, "controller_url": "http://not-a-websocket"})
    assert not refused.ok and "controller_url" in (refused.failure or "")
