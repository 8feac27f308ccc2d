"""The catalog loader: shipped templates validate; bad files are refused by name and field; nothing half-loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from portal.catalog import default_catalog_dir, load_catalog, parse_template_file
from portal.errors import ValidationError
from portal.models import AppTemplate

SHIPPED = sorted(default_catalog_dir().glob("*.yaml"))


@pytest.fixture()
def catalog_copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    target.mkdir()
    for path in SHIPPED:
        shutil.copy(path, target / path.name)
    return target


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_template_is_valid(path: Path) -> None:
    template = parse_template_file(path)
    assert template.slug == path.stem
    keys = [spec.key for spec in template.values.required + template.values.optional]
    assert len(keys) == len(set(keys))


def test_seed_apps_are_in_the_catalog() -> None:
    assert {"postgresql", "redis", "n8n", "anythingllm"} <= {p.stem for p in SHIPPED}


def test_load_creates_then_is_idempotent(db, catalog_copy: Path) -> None:
    first = load_catalog(db, catalog_copy)
    assert sorted(first.created) == sorted(p.stem for p in SHIPPED)
    second = load_catalog(db, catalog_copy)
    assert second.created == [] and second.updated == []
    assert sorted(second.unchanged) == sorted(first.created)
    pg = db.scalars(select(AppTemplate).where(AppTemplate.slug == "postgresql")).one()
    assert pg.helm_value_specs["required"][0]["type"] == "password"
    assert pg.min_storage_gb == 8


def test_changed_file_updates_and_removed_file_deactivates(db, catalog_copy: Path) -> None:
    load_catalog(db, catalog_copy)
    _edit(catalog_copy / "redis.yaml", lambda d: d.update(monthly_price=9.5))
    (catalog_copy / "n8n.yaml").unlink()
    result = load_catalog(db, catalog_copy)
    assert result.updated == ["redis"]
    assert result.deactivated == ["n8n"]
    n8n = db.scalars(select(AppTemplate).where(AppTemplate.slug == "n8n")).one()
    assert n8n.is_active is False
    # Bringing the file back reactivates the same row.
    shutil.copy(default_catalog_dir() / "n8n.yaml", catalog_copy / "n8n.yaml")
    assert load_catalog(db, catalog_copy).updated == ["n8n"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(category="games"), "category"),
        (lambda d: d["chart"].pop("version"), "chart.version"),
        (lambda d: d.update(default_port=70000), "default_port"),
        (lambda d: d["values"]["optional"][0].update(type="color"), "values.optional.0.type"),
        (lambda d: d.update(surprise=True), "surprise"),
        (lambda d: d["chart"].update(repository="ftp://example.com"), "chart"),
    ],
)
def test_invalid_file_names_file_and_field_and_writes_nothing(db, catalog_copy: Path, change, field: str) -> None:
    _edit(catalog_copy / "redis.yaml", change)
    with pytest.raises(ValidationError) as caught:
        load_catalog(db, catalog_copy)
    assert "redis.yaml" in caught.value.message
    assert any(key.startswith(f"redis.yaml: {field}") for key in caught.value.fields), caught.value.fields
    assert db.scalars(select(AppTemplate)).all() == []


def test_slug_must_match_file_name(catalog_copy: Path) -> None:
    _edit(catalog_copy / "redis.yaml", lambda d: d.update(slug="valkey"))
    with pytest.raises(ValidationError, match=r"redis.yaml: slug"):
        parse_template_file(catalog_copy / "redis.yaml")


def test_cli_reports_file_and_field(app, catalog_copy: Path) -> None:
    _edit(catalog_copy / "postgresql.yaml", lambda d: d.update(monthly_price=-1))
    runner = CliRunner()
    from portal.cli import catalog_load

    result = runner.invoke(catalog_load, [str(catalog_copy)], obj=_script_info(app))
    assert result.exit_code != 0
    assert "postgresql.yaml: monthly_price" in result.output


def _script_info(app):
    from flask.cli import ScriptInfo

    return ScriptInfo(create_app=lambda: app)
