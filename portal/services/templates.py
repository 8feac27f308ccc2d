"""The app marketplace (seed 002 F1): list, search, filter and rank app templates; get one by id or slug.

Templates are global rows; only admins see inactive ones (a template whose catalog file went away).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.errors import NotFound
from portal.models import AppCategory, AppTemplate, User, UserRole

# Search ranks, best first: where the search text was found.
RANK_NAME_EXACT = 0
RANK_NAME_PREFIX = 1
RANK_NAME_CONTAINS = 2
RANK_TAG_EXACT = 3
RANK_OTHER = 4  # a tag or the short description contains it


@dataclass(frozen=True)
class TemplateFilter:
    """What a marketplace list asks for; every part is optional."""

    category: AppCategory | None = None
    search: str | None = None
    tags: Sequence[str] = ()
    is_active: bool | None = None


def _sees_inactive(actor: User) -> bool:
    return actor.role == UserRole.admin


def search_rank(template: AppTemplate, needle: str) -> int | None:
    """How well `template` matches the lower-cased `needle` (see RANK_*), or None when it does not."""
    name = template.name.lower()
    if name == needle or template.slug == needle:
        return RANK_NAME_EXACT
    if name.startswith(needle):
        return RANK_NAME_PREFIX
    if needle in name:
        return RANK_NAME_CONTAINS
    tags = [str(tag).lower() for tag in template.tags or []]
    if needle in tags:
        return RANK_TAG_EXACT
    if any(needle in tag for tag in tags) or needle in (template.description or "").lower():
        return RANK_OTHER
    return None


def list_templates(session: Session, actor: User, filters: TemplateFilter | None = None) -> list[AppTemplate]:
    """Templates matching `filters`: all given tags (case-insensitive), the category, and the search text.

    With a search text the result is ranked — name matches before tag and description matches —
    then ordered by name; without one it is ordered by name. Non-admins see active templates only.
    The catalog is small (tens of entries), so matching and ranking run in Python, identically on
    SQLite and PostgreSQL.
    """
    filters = filters or TemplateFilter()
    stmt = select(AppTemplate)
    if not _sees_inactive(actor):
        stmt = stmt.where(AppTemplate.is_active.is_(True))
    if filters.is_active is not None:
        stmt = stmt.where(AppTemplate.is_active.is_(filters.is_active))
    if filters.category is not None:
        stmt = stmt.where(AppTemplate.category == filters.category)
    templates = list(session.scalars(stmt))

    wanted_tags = {tag.strip().lower() for tag in filters.tags if tag.strip()}
    if wanted_tags:
        templates = [t for t in templates if wanted_tags <= {str(tag).lower() for tag in t.tags or []}]

    needle = (filters.search or "").strip().lower()
    if not needle:
        return sorted(templates, key=lambda t: (t.name.lower(), str(t.id)))
    ranked = [(rank, t) for t in templates if (rank := search_rank(t, needle)) is not None]
    ranked.sort(key=lambda pair: (pair[0], pair[1].name.lower(), str(pair[1].id)))
    return [t for _, t in ranked]


def get_template(session: Session, actor: User, ref: uuid.UUID | str) -> AppTemplate:
    """A template by id or slug; an inactive one is `NotFound` for non-admins."""
    stmt = select(AppTemplate)
    key = _as_uuid(ref)
    stmt = stmt.where(AppTemplate.id == key) if key is not None else stmt.where(AppTemplate.slug == str(ref).lower())
    template = session.scalars(stmt).one_or_none()
    if template is None or (not template.is_active and not _sees_inactive(actor)):
        raise NotFound("Template not found.")
    return template


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
