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
from portal.models import AppCategory, AppTemplate

SHIPPED = sorted(default_catalog_dir().glob("*.yaml"))


@pytest.fixture()
def catalog_copy(tmp_path: Path) -> Path:
    """A copy of the shipped catalog, our charts included, to break at will."""
    target = tmp_path / "catalog"
    target.mkdir()
    for path in SHIPPED:
        shutil.copy(path, target / path.name)
    shutil.copytree(default_catalog_dir() / "charts", target / "charts")
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


def test_at_least_ten_apps_cover_every_category() -> None:
    templates = [parse_template_file(path, default_catalog_dir() / "charts") for path in SHIPPED]
    assert len(templates) >= 10
    assert {t.category for t in templates} == set(AppCategory)
    for template in templates:
        assert template.documentation_url and template.monthly_price > 0 and template.tags, template.slug
        kinds = {spec.type for spec in template.values.required + template.values.optional}
        assert kinds, f"{template.slug} has no configurable values"
    every_kind = {spec.type for t in templates for spec in t.values.required + t.values.optional}
    assert {"password", "select", "number", "boolean", "text"} <= every_kind


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
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(monthly_price="cheap"), "monthly_price"),
        (lambda d: d["values"]["optional"][0].update(default="3gb"), "values.optional.0"),
        (lambda d: d["chart"].update(name="valkey"), "chart.name"),
        (lambda d: d["chart"].update(version="0.2.0"), "chart.version"),
    ],
    ids=[
        "category",
        "no-chart-version",
        "port",
        "value-type",
        "unknown-field",
        "repository",
        "no-name",
        "price-type",
        "select-default",
        "missing-chart",
        "chart-version",
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


def _snapshot(db) -> list[tuple]:
    db.expire_all()
    rows = db.scalars(select(AppTemplate).order_by(AppTemplate.slug))
    return [(t.slug, t.is_active, t.monthly_price, t.helm_chart_version, t.version) for t in rows]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.pop("description"), "redis.yaml: description"),
        (lambda d: d.update(default_port="web"), "redis.yaml: default_port"),
        (lambda d: d["values"]["optional"][0].update(default="3gb"), "redis.yaml: values.optional.0"),
        (lambda d: d["chart"].update(name="keydb"), "redis.yaml: chart.name"),
        (lambda d: d["chart"].update(version="9.9.9"), "redis.yaml: chart.version"),
    ],
    ids=["missing-field", "wrong-type", "select-default", "missing-chart", "chart-version"],
)
def test_cli_refuses_bad_file_and_leaves_database_unchanged(app, db, catalog_copy: Path, change, where) -> None:
    from portal.cli import main

    runner = CliRunner()
    loaded = runner.invoke(main, ["catalog", "load", str(catalog_copy)], obj=_script_info(app))
    assert loaded.exit_code == 0, loaded.output
    before = _snapshot(db)
    assert len(before) == len(SHIPPED)

    _edit(catalog_copy / "redis.yaml", change)
    _edit(catalog_copy / "postgresql.yaml", lambda d: d.update(monthly_price=99))  # a valid change, not applied
    (catalog_copy / "n8n.yaml").unlink()  # a removal, not applied either
    result = runner.invoke(main, ["catalog", "load", str(catalog_copy)], obj=_script_info(app))
    assert result.exit_code != 0
    assert where in result.output, result.output
    assert _snapshot(db) == before


def test_cli_removing_a_file_deactivates_its_template(app, db, catalog_copy: Path) -> None:
    from portal.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["catalog", "load", str(catalog_copy)], obj=_script_info(app)).exit_code == 0
    (catalog_copy / "gitea.yaml").unlink()
    result = runner.invoke(main, ["catalog", "load", str(catalog_copy)], obj=_script_info(app))
    assert result.exit_code == 0, result.output
    assert "1 deactivated" in result.output
    states = {slug: active for slug, active, *_ in _snapshot(db)}
    assert states.pop("gitea") is False
    assert all(states.values())


def _script_info(app):
    from flask.cli import ScriptInfo

    return ScriptInfo(create_app=lambda: app)


def test_template_on_a_public_repository_needs_no_local_chart(db, catalog_copy: Path) -> None:
    from portal.charts import resolve_chart

    def public(d) -> None:
        d["chart"].update(repository="https://charts.bitnami.com/bitnami", name="redis", version="20.1.0")

    _edit(catalog_copy / "redis.yaml", public)
    shutil.rmtree(catalog_copy / "charts" / "redis")
    load_catalog(db, catalog_copy)
    row = db.scalars(select(AppTemplate).where(AppTemplate.slug == "redis")).one()
    ref = resolve_chart(row.helm_repo_url, row.helm_chart_name, row.helm_chart_version, catalog_copy / "charts")
    assert (ref.repo, ref.chart, ref.version, ref.is_local) == (
        "https://charts.bitnami.com/bitnami",
        "redis",
        "20.1.0",
        False,
    )
