"""Benchmark of the marketplace API: `GET /api/v1/cloud/templates` with 500 templates loaded, per query shape,
against `GET /api/v1/me` (authentication + one row + serialization) measured in the same run.

    python -m bench.marketplace [--count 500] [--runs 200] [--database-url URL] [--json FILE]

Templates are generated from the catalog files (varied names, tags and categories) and inserted into a
fresh database: PostgreSQL when `--database-url` or KAIDEN_TEST_DATABASE_URL names a server (a new
database is created on it and dropped afterwards), else SQLite in a temp dir. Requests go through the
Flask test client as a customer user with a bearer token, so the figures are the portal's own time
(routing, auth, query, ranking, pagination, serialization) without a network. Prints p50/p95 per shape,
the ratio of each p50 to the baseline's p50, and the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from portal import create_app, database_of  # noqa: E402
from portal.catalog import TemplateFile, default_catalog_dir, parse_template_file  # noqa: E402
from portal.db import Base  # noqa: E402
from portal.models import AppCategory, AppTemplate  # noqa: E402
from portal.settings import load_settings  # noqa: E402

BASELINE = ("baseline: GET /api/v1/me", "/api/v1/me")
SHAPES = [
    ("list, first page (50)", "/api/v1/cloud/templates"),
    ("list, page 5 of 50", "/api/v1/cloud/templates?page=5&per_page=50"),
    ("list, 200 per page", "/api/v1/cloud/templates?per_page=200"),
    ("category=database", "/api/v1/cloud/templates?category=database"),
    ("tags=database,sql", "/api/v1/cloud/templates?tags=database,sql"),
    ("search=postgres (few hits)", "/api/v1/cloud/templates?search=postgres"),
    ("search=a (most match)", "/api/v1/cloud/templates?search=a"),
    ("search+category+tags", "/api/v1/cloud/templates?search=sql&category=database&tags=relational"),
    ("search=zzz (no hit)", "/api/v1/cloud/templates?search=zzz"),
]
ADJECTIVES = ["Pro", "Lite", "Cloud", "Edge", "Team", "Studio", "Plus", "Core", "Hub", "Max"]
EXTRA_TAGS = ["self-hosted", "open-source", "popular", "beta", "enterprise", "starter", "ha", "gpu"]


def generated_templates(count: int) -> list[TemplateFile]:
    """`count` variants of the shipped catalog: names, slugs, tags, categories and prices vary."""
    base = [parse_template_file(p) for p in sorted(default_catalog_dir().glob("*.yaml"))]
    categories = list(AppCategory)
    out = []
    for i in range(count):
        source = base[i % len(base)]
        # two in three keep their own category; the rest spread over all seven
        category = source.category if i % 3 else categories[i % len(categories)]
        tags = [*source.tags, EXTRA_TAGS[i % len(EXTRA_TAGS)], f"batch-{i % 25}"]
        out.append(
            source.model_copy(
                update={
                    "slug": f"{source.slug}-{i:04d}",
                    "name": f"{source.name} {ADJECTIVES[i % len(ADJECTIVES)]} {i}",
                    "category": category,
                    "tags": tags,
                    "monthly_price": round(source.monthly_price + (i % 7) * 1.5, 2),
                }
            )
        )
    return out


@contextmanager
def database(url: str | None) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, label) of a fresh database, removed afterwards."""
    if url and url.startswith("postgresql"):
        name = f"kaiden_bench_{uuid.uuid4().hex[:8]}"
        server = make_url(url)
        admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            version = conn.execute(text("SHOW server_version")).scalar()
        try:
            yield server.set(database=name).render_as_string(hide_password=False), f"PostgreSQL {version}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        import sqlite3

        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db", f"SQLite {sqlite3.sqlite_version} (file)"


def prepare(app, count: int) -> str:
    """Schema, `count` templates, a customer user; returns the user's bearer token."""
    import portal.models  # noqa: F401  (registers every table)
    from portal.services import identity

    db = database_of(app)
    Base.metadata.create_all(db.engine)
    with db.session() as session:
        for template in generated_templates(count):
            session.add(AppTemplate(**template.columns(), is_active=True))
        password = secrets.token_urlsafe(16)
        admin = identity.create_admin(session, email="bench-admin@example.com", name="Bench", password=password)
        customer = identity.create_customer(session, admin, name="Bench Corp")
        user = identity.create_user(
            session, admin, email="bench@example.com", name="Bench User", role="customer", customer_id=customer.id
        )
        _, token = identity.create_token(session, user, name="bench")
    return token


def measure(client, headers: dict[str, str], shapes, runs: int, warmup: int = 10) -> dict[str, list[float]]:
    """Round-robin over the shapes, so load changes during the run hit every shape alike."""
    samples: dict[str, list[float]] = {label: [] for label, _ in shapes}
    for _ in range(warmup):
        for _, url in shapes:
            assert client.get(url, headers=headers).status_code == 200
    for _ in range(runs):
        for label, url in shapes:
            started = time.perf_counter()
            response = client.get(url, headers=headers)
            samples[label].append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.data[:300]!r}")
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def conditions(db_label: str, count: int, runs: int) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "database": db_label,
        "templates": str(count),
        "runs per shape": str(runs),
        "client": "Flask test client (in process, no network)",
        "python": platform.python_version(),
        "flask": metadata.version("flask"),
        "sqlalchemy": metadata.version("sqlalchemy"),
        "cpu": f"{cpu} x{os.cpu_count()}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="templates to load (default 500)")
    parser.add_argument("--runs", type=int, default=200, help="requests per query shape (default 200)")
    parser.add_argument("--database-url", default=os.environ.get("KAIDEN_TEST_DATABASE_URL") or None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with database(args.database_url) as (url, db_label), tempfile.TemporaryDirectory() as home:
        cond = conditions(db_label, args.count, args.runs)
        settings = load_settings(
            {"home": home, "database_url": url, "secret_key": "bench", "testing": True, "demo_data": False},
            environ={},
        )
        app = create_app(settings)
        try:
            token = prepare(app, args.count)
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}
            total = client.get("/api/v1/cloud/templates", headers=headers).get_json()
            hits = {label: client.get(u, headers=headers).get_json()["total"] for label, u in SHAPES}
            samples = measure(client, headers, [BASELINE, *SHAPES], args.runs)
        finally:
            database_of(app).dispose()

    base_p50 = statistics.median(samples[BASELINE[0]])
    rows = []
    for label, _ in [BASELINE, *SHAPES]:
        values = samples[label]
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        rows.append(
            {"shape": label, "p50_ms": p50, "p95_ms": p95, "ratio_p50": p50 / base_p50, "hits": hits.get(label)}
        )

    print(f"Marketplace API, {args.count} templates ({total.get('total', '?')} listed for a customer user)\n")
    print(f"| {'query':<30} | {'matches':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'p50 / baseline':>14} |")
    print(f"|{'-' * 32}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 15}:|")
    for row in rows:
        hits_text = "" if row["hits"] is None else str(row["hits"])
        print(
            f"| {row['shape']:<30} | {hits_text:>7} | {row['p50_ms']:7.2f} | {row['p95_ms']:7.2f} "
            f"| {row['ratio_p50']:14.2f} |"
        )
    print("\nConditions:")
    for key, value in cond.items():
        print(f"  {key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"conditions": cond, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
