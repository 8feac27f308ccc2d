"""ansible-runner failures that no task reports (ansible refusing the playbook, dying, being killed) still reach
the operation as a readable, redacted message: the status, how far it got and ansible's last words."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal.infra import runner

pytestmark = pytest.mark.integration

SECRET = "s3cr3t_Value_42"


def test_a_playbook_ansible_refuses_fails_with_its_last_output_redacted(tmp_path: Path, monkeypatch) -> None:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    task = f"    - name: no such module\n      kaiden_no_such_module_{SECRET}: {{}}\n"
    (playbooks / "broken.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + task)
    monkeypatch.setattr(runner, "PLAYBOOKS_DIR", playbooks)
    with runner.private_dir() as workdir:
        result = runner.run_playbook("broken.yml", workdir=workdir, extravars={}, secrets=(SECRET,))
    assert not result.ok and result.status == "failed"
    assert result.failure is not None
    assert "after 0 of 1 tasks started" in result.failure
    assert "last output:" in result.failure and "kaiden_no_such_module_" in result.failure  # ansible's own words
    assert SECRET not in result.failure  # redacted like every task message
