"""Marketplace templates: category and tag filters, case-insensitive ranked search, active-only for non-admins."""

from __future__ import annotations

import uuid

import pytest

from portal.errors import NotFound
from portal.models import AppCategory
from portal.services import templates
from portal.services.templates import TemplateFilter
from tests.factories import make_admin, make_engineer, make_template, make_user


@pytest.fixture()
def catalog(db):
    return {
        "pg": make_template(
            db, slug="postgresql", name="PostgreSQL", description="Relational database", tags=["Database", "SQL"]
        ),
        "redis": make_template(
            db,
            slug="redis",
            name="Redis",
            description="In-memory store used by Postgres apps",
            tags=["Cache", "Database"],
        ),
        "llm": make_template(
            db,
            slug="anythingllm",
            name="AnythingLLM",
            description="Private ChatGPT",
            category=AppCategory.ai_llm,
            tags=["AI", "Chatbot"],
        ),
        "n8n": make_template(
            db,
            slug="n8n",
            name="n8n Workflow",
            description="Automate with SQL and more",
            category=AppCategory.automation,
            tags=["Automation"],
        ),
        "pgadmin": make_template(
            db,
            slug="pgadmin",
            name="pgAdmin for Postgres",
            description="Admin UI",
            category=AppCategory.devops,
            tags=["postgres-tools"],
        ),
        "old": make_template(
            db, slug="legacy-db", name="Legacy DB", description="Retired", is_active=False, tags=["Database"]
        ),
    }


def _slugs(db, actor, **kw):
    return [t.slug for t in templates.list_templates(db, actor, TemplateFilter(**kw))]


def test_non_admins_see_active_templates_only_ordered_by_name(db, catalog):
    user = make_user(db)
    assert _slugs(db, user) == ["anythingllm", "n8n", "pgadmin", "postgresql", "redis"]
    assert _slugs(db, make_engineer(db)) == _slugs(db, user)
    assert "legacy-db" in _slugs(db, make_admin(db))
    assert _slugs(db, make_admin(db), is_active=False) == ["legacy-db"]
    assert _slugs(db, user, is_active=False) == []


def test_category_filter(db, catalog):
    user = make_user(db)
    assert _slugs(db, user, category=AppCategory.database) == ["postgresql", "redis"]
    assert _slugs(db, user, category=AppCategory.web) == []


def test_tags_filter_needs_every_tag_case_insensitively(db, catalog):
    user = make_user(db)
    assert _slugs(db, user, tags=["database"]) == ["postgresql", "redis"]
    assert _slugs(db, user, tags=["DATABASE", "sql"]) == ["postgresql"]
    assert _slugs(db, user, tags=["database", "ai"]) == []
    assert _slugs(db, user, tags=[" ", ""]) == _slugs(db, user)


def test_search_is_case_insensitive_over_name_description_and_tags(db, catalog):
    user = make_user(db)
    assert set(_slugs(db, user, search="CHATGPT")) == {"anythingllm"}  # description
    assert set(_slugs(db, user, search="chatbot")) == {"anythingllm"}  # tag
    assert set(_slugs(db, user, search="cache")) == {"redis"}
    assert _slugs(db, user, search="zzz") == []
    assert _slugs(db, user, search="retired") == []  # inactive never shows for non-admins


def test_search_ranks_name_matches_before_tag_and_description_matches(db, catalog):
    user = make_user(db)
    # name prefix (postgresql) > name contains (pgadmin for postgres) > tag/description (redis)
    assert _slugs(db, user, search="postgres") == ["postgresql", "pgadmin", "redis"]
    # a name hit first, then a description hit
    assert _slugs(db, user, search="sql") == ["postgresql", "n8n"]
    assert _slugs(db, user, search="redis")[0] == "redis"
    # exact tag ranks above a partial tag or description hit
    assert _slugs(db, user, search="database") == ["postgresql", "redis"]


def test_filters_combine(db, catalog):
    user = make_user(db)
    assert _slugs(db, user, search="postgres", category=AppCategory.database) == ["postgresql", "redis"]
    assert _slugs(db, user, search="postgres", tags=["cache"]) == ["redis"]


def test_search_rank_values(db, catalog):
    pg = catalog["pg"]
    assert templates.search_rank(pg, "postgresql") == templates.RANK_NAME_EXACT
    assert templates.search_rank(pg, "postg") == templates.RANK_NAME_PREFIX
    assert templates.search_rank(pg, "gresq") == templates.RANK_NAME_CONTAINS
    assert templates.search_rank(pg, "database") == templates.RANK_TAG_EXACT
    assert templates.search_rank(pg, "relational") == templates.RANK_OTHER
    assert templates.search_rank(pg, "nothing") is None


def test_get_by_id_or_slug(db, catalog):
    user = make_user(db)
    pg = catalog["pg"]
    assert templates.get_template(db, user, pg.id) is pg
    assert templates.get_template(db, user, str(pg.id)) is pg
    assert templates.get_template(db, user, "postgresql") is pg
    assert templates.get_template(db, user, "PostgreSQL") is pg
    with pytest.raises(NotFound):
        templates.get_template(db, user, "legacy-db")
    with pytest.raises(NotFound):
        templates.get_template(db, user, uuid.uuid4())
    assert templates.get_template(db, make_admin(db), "legacy-db").slug == "legacy-db"
