"""Settings: typed parsing of KAIDEN_* variables, generated secrets, and the README documenting every one."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal.settings import ENVIRONMENT, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [var for var, _ in ENVIRONMENT.values() if f"`{var}`" not in text]
    assert missing == []


def test_environment_is_parsed_and_typed(tmp_path: Path) -> None:
    settings = load_settings(environ={"KAIDEN_HOME": str(tmp_path), "KAIDEN_PORT": "9001", "KAIDEN_DEMO_DATA": "no"})
    assert settings.home == tmp_path.resolve()
    assert settings.port == 9001 and settings.demo_data is False
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'kaiden.db'}"
    assert settings.redis_url is None
    assert settings.pulumi_backend_url == f"file://{tmp_path.resolve() / 'pulumi-state'}"


def test_generated_secrets_are_private_and_stable(tmp_path: Path) -> None:
    first = load_settings({"home": str(tmp_path)}, environ={})
    second = load_settings({"home": str(tmp_path)}, environ={})
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 32
    for name in ("secret_key", "encryption_key", "pulumi_passphrase"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert first.secret_key not in repr(first)


def test_bad_number_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="KAIDEN_PORT"):
        load_settings(environ={"KAIDEN_HOME": str(tmp_path), "KAIDEN_PORT": "eighty"})
