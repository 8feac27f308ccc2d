"""REST v1: the app marketplace (seed 002 F1) — list, search and filter templates; get one by id or slug."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy.orm import Session

from portal.api.framework import Page, PageQuery, ResponseModel, Router, paginate
from portal.crypto import redact
from portal.models import AppCategory, AppTemplate, User
from portal.services import templates as service

router = Router("templates", tags=["Templates"])


class TemplateFilter(PageQuery):
    category: AppCategory | None = None
    search: str | None = Field(
        None,
        max_length=100,
        description="Case-insensitive text in the name, short description or tags; name matches rank first.",
    )
    tags: list[str] | None = Field(
        None, max_length=10, description="Only templates with every one of these tags (`?tags=a,b`), any case."
    )
    is_active: bool | None = Field(None, description="Admins: filter by active flag. Others only ever see active.")


class HelmChartOut(ResponseModel):
    repository: str = Field(description="Chart repository URL, or `local` for charts we own (catalog/charts).")
    chart_name: str
    chart_version: str
    default_values: dict[str, Any] = Field(description="Base values (secret-looking entries are masked).")


class ValueSpecOut(ResponseModel):
    """One Helm value the user configures (seed 002 HelmValueSpec)."""

    key: str
    label: str
    type: str
    default_value: Any = None
    placeholder: str | None = None
    help_text: str | None = None
    required: bool = False
    options: list[str] | None = None

    @classmethod
    def of(cls, spec: dict[str, Any]) -> ValueSpecOut:
        # The catalog stores `default`/`help`; the seed's names are `default_value`/`help_text`.
        kind = spec.get("type", "text")
        default = spec.get("default_value", spec.get("default"))
        return cls(
            key=spec["key"],
            label=spec.get("label", spec["key"]),
            type=kind,
            default_value=None if kind == "password" else default,
            placeholder=spec.get("placeholder"),
            help_text=spec.get("help_text", spec.get("help")),
            required=bool(spec.get("required", False)),
            options=spec.get("options"),
        )


class ResourcesOut(ResponseModel):
    vcpu: int
    ram_gb: float
    storage_gb: int


class TemplateOut(ResponseModel):
    id: uuid.UUID
    slug: str
    name: str
    icon_url: str | None
    description: str | None
    full_description: str | None
    category: AppCategory
    category_label: str
    tags: list[str]
    monthly_price: float
    documentation_url: str | None
    helm_chart: HelmChartOut
    required_values: list[ValueSpecOut]
    optional_values: list[ValueSpecOut]
    default_port: int
    ingress_enabled: bool
    min_resources: ResourcesOut
    is_active: bool
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, template: AppTemplate) -> TemplateOut:
        specs = template.helm_value_specs or {}
        return cls(
            id=template.id,
            slug=template.slug,
            name=template.name,
            icon_url=template.icon_url,
            description=template.description,
            full_description=template.full_description,
            category=template.category,
            category_label=template.category_label,
            tags=[str(tag) for tag in template.tags or []],
            monthly_price=template.monthly_price,
            documentation_url=template.documentation_url,
            helm_chart=HelmChartOut(
                repository=template.helm_repo_url,
                chart_name=template.helm_chart_name,
                chart_version=template.helm_chart_version,
                default_values=redact(template.helm_default_values or {}, template.secret_keys),
            ),
            required_values=[ValueSpecOut.of(spec) for spec in specs.get("required", [])],
            optional_values=[ValueSpecOut.of(spec) for spec in specs.get("optional", [])],
            default_port=template.default_port,
            ingress_enabled=template.ingress_enabled,
            min_resources=ResourcesOut(
                vcpu=template.min_vcpu, ram_gb=template.min_ram_gb, storage_gb=template.min_storage_gb
            ),
            is_active=template.is_active,
            created_at=template.created_at,
            updated_at=template.updated_at,
            version=template.version,
        )


@router.get(
    "/cloud/templates", query=TemplateFilter, response=TemplateOut, paginated=True, summary="List app templates"
)
def list_templates(session: Session, actor: User, query: TemplateFilter) -> Page[TemplateOut]:
    """The marketplace: filter by `category` and `tags`, `search` ranked (name matches first), paginated."""
    filters = service.TemplateFilter(
        category=query.category, search=query.search, tags=tuple(query.tags or ()), is_active=query.is_active
    )
    # Paginate the rows first: building the response models is the expensive part (bench/marketplace.py).
    page = paginate(service.list_templates(session, actor, filters), query)
    return Page(items=[TemplateOut.of(t) for t in page.items], page=page.page, per_page=page.per_page, total=page.total)


@router.get("/cloud/templates/<template_ref>", response=TemplateOut, summary="Get an app template")
def get_template(session: Session, actor: User, template_ref: str) -> TemplateOut:
    """By id or by slug (`/cloud/templates/postgresql`)."""
    return TemplateOut.of(service.get_template(session, actor, template_ref))
