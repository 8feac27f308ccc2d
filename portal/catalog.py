"""The app catalog: `catalog/<slug>.yaml` files validated against one schema and upserted as templates.

An invalid file is refused with its name and the offending field, and then nothing is written.
Templates whose file disappeared are deactivated, never deleted (services still point at them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.charts import resolve_chart
from portal.errors import ValidationError
from portal.models import AppCategory, AppTemplate

LOCAL_REPOSITORY = "local"  # charts we own, under catalog/charts/<name>
SLUG = r"^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$"
VALUE_KEY = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


def default_catalog_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "catalog"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ValueSpec(_Strict):
    """One user-configurable Helm value (seed 002 `helm_value_specs`)."""

    key: Annotated[str, Field(pattern=VALUE_KEY, max_length=200)]
    label: Annotated[str, Field(min_length=1, max_length=100)]
    type: Literal["text", "password", "number", "boolean", "select"] = "text"
    default: str | int | float | bool | None = None
    placeholder: Annotated[str, Field(max_length=200)] | None = None
    help: Annotated[str, Field(max_length=500)] | None = None
    required: bool = False
    options: list[str] | None = None

    @model_validator(mode="after")
    def _options_match_type(self) -> ValueSpec:
        if self.type == "select":
            if not self.options:
                raise ValueError("a select value needs a non-empty options list")
            if self.default is not None and str(self.default) not in self.options:
                raise ValueError(f"default {self.default!r} is not one of the options")
        elif self.options is not None:
            raise ValueError("options are only allowed for type select")
        if self.type == "password" and self.default not in (None, ""):
            raise ValueError("a password value cannot have a default")
        return self


class ValueSpecs(_Strict):
    required: list[ValueSpec] = Field(default_factory=list)
    optional: list[ValueSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_keys(self) -> ValueSpecs:
        seen: set[str] = set()
        for spec in [*self.required, *self.optional]:
            if spec.key in seen:
                raise ValueError(f"value key {spec.key!r} appears twice")
            seen.add(spec.key)
        return self


class ChartSpec(_Strict):
    repository: Annotated[str, Field(min_length=1, max_length=500)]
    name: Annotated[str, Field(pattern=SLUG)]
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")]
    values: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _repository_kind(self) -> ChartSpec:
        if self.repository != LOCAL_REPOSITORY and not re.match(r"^(https?|oci)://", self.repository):
            raise ValueError(f"repository must be {LOCAL_REPOSITORY!r} or an http(s):// or oci:// URL")
        return self


class MinResources(_Strict):
    vcpu: Annotated[int, Field(ge=0, le=64)] = 1
    ram_gb: Annotated[float, Field(ge=0, le=512)] = 1.0
    storage_gb: Annotated[int, Field(ge=0, le=10_000)] = 5


class TemplateFile(_Strict):
    """The schema of one `catalog/<slug>.yaml`."""

    slug: Annotated[str, Field(pattern=SLUG)]
    name: Annotated[str, Field(min_length=1, max_length=255)]
    description: Annotated[str, Field(min_length=1, max_length=255)]
    full_description: str | None = None
    category: AppCategory
    icon: Annotated[str, Field(max_length=500)] | None = None
    tags: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(default_factory=list)
    monthly_price: Annotated[float, Field(ge=0)] = 0.0
    documentation_url: Annotated[str, Field(pattern=r"^https?://", max_length=500)] | None = None
    chart: ChartSpec
    values: ValueSpecs = Field(default_factory=ValueSpecs)
    default_port: Annotated[int, Field(ge=1, le=65535)] = 80
    ingress_enabled: bool = True
    min_resources: MinResources = Field(default_factory=MinResources)

    def columns(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "description": self.description,
            "full_description": self.full_description,
            "category": self.category,
            "icon_url": self.icon,
            "tags": list(self.tags),
            "monthly_price": self.monthly_price,
            "documentation_url": self.documentation_url,
            "helm_repo_url": self.chart.repository,
            "helm_chart_name": self.chart.name,
            "helm_chart_version": self.chart.version,
            "helm_default_values": self.chart.values,
            "helm_value_specs": self.values.model_dump(exclude_none=True),
            "default_port": self.default_port,
            "ingress_enabled": self.ingress_enabled,
            "min_vcpu": self.min_resources.vcpu,
            "min_ram_gb": self.min_resources.ram_gb,
            "min_storage_gb": self.min_resources.storage_gb,
        }


@dataclass
class LoadResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"catalog: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.deactivated)} deactivated"
        )


def parse_template_file(path: Path, charts: Path | None = None) -> TemplateFile:
    """Parse and validate one file; errors name the file and the field.

    With `charts` (a `catalog/charts` directory), a template using one of our own charts must find it
    there with the same version as its Chart.yaml.
    """
    where = path.name
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        message = f"{where}: not readable YAML ({exc.__class__.__name__})"
        raise ValidationError(message, fields={where: str(exc)}) from exc
    if not isinstance(raw, dict):
        raise ValidationError(f"{where}: expected a mapping at the top level", fields={where: "expected a mapping"})
    try:
        template = TemplateFile.model_validate(raw)
    except PydanticValidationError as exc:
        fields = {f"{where}: {'.'.join(str(p) for p in err['loc']) or '(top)'}": err["msg"] for err in exc.errors()}
        first = next(iter(fields.items()))
        raise ValidationError(f"{first[0]}: {first[1]}", fields=fields) from exc
    if template.slug != path.stem:
        message = f"must equal the file name ({path.stem!r})"
        raise ValidationError(f"{where}: slug: {message}", fields={f"{where}: slug": message})
    if charts is not None and template.chart.repository == LOCAL_REPOSITORY:
        _check_local_chart(where, template.chart, charts)
    return template


def _check_local_chart(where: str, chart: ChartSpec, charts: Path) -> None:
    try:
        resolve_chart(chart.repository, chart.name, chart.version, charts)
    except ValidationError as exc:
        field_name = "chart.name" if "chart.name" in exc.fields else "chart.version"
        message = exc.message if field_name == "chart.version" else f"{exc.message} ({exc.fields[field_name]})"
        raise ValidationError(f"{where}: {field_name}: {message}", fields={f"{where}: {field_name}": message}) from None


def load_catalog(session: Session, directory: Path) -> LoadResult:
    """Validate every `*.yaml` in `directory` first; only when all are valid, upsert them all.

    Templates on our own charts need them in `directory/charts/<name>` with the template's version.
    """
    charts = directory / "charts"
    templates = [parse_template_file(path, charts) for path in sorted(directory.glob("*.yaml"))]
    result = LoadResult()
    existing = {t.slug: t for t in session.scalars(select(AppTemplate))}
    for template in templates:
        columns = template.columns()
        row = existing.pop(template.slug, None)
        if row is None:
            session.add(AppTemplate(**columns, is_active=True))
            result.created.append(template.slug)
            continue
        changed = not row.is_active or any(getattr(row, name) != value for name, value in columns.items())
        if changed:
            for name, value in columns.items():
                setattr(row, name, value)
            row.is_active = True
            result.updated.append(template.slug)
        else:
            result.unchanged.append(template.slug)
    for slug, row in existing.items():
        if row.is_active:
            row.is_active = False
            result.deactivated.append(slug)
    session.flush()
    return result
