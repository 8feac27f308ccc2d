"""Our charts as a Helm repository: index.yaml, archives whose digests match, byte-identical packaging."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from portal import chartrepo
from portal.charts import charts_dir
from portal.cli import main
from portal.errors import ValidationError

CHART_NAMES = sorted(p.name for p in charts_dir().iterdir() if (p / "Chart.yaml").is_file())


def test_index_lists_every_chart_and_digests_match_the_served_archives(client) -> None:
    response = client.get("/charts/index.yaml")
    assert response.status_code == 200
    index = yaml.safe_load(response.data)
    assert index["apiVersion"] == "v1"
    assert index["generated"]
    assert sorted(index["entries"]) == CHART_NAMES
    for name, entries in index["entries"].items():
        (entry,) = entries
        chart_yaml = yaml.safe_load((charts_dir() / name / "Chart.yaml").read_text())
        assert entry["name"] == name and entry["version"] == str(chart_yaml["version"])
        assert entry["apiVersion"] == "v2" and entry["created"]
        assert entry["urls"] == [f"{name}-{entry['version']}.tgz"]
        archive = client.get(f"/charts/{entry['urls'][0]}")  # relative to the repository URL, as Helm resolves it
        assert archive.status_code == 200
        assert archive.mimetype == "application/gzip"
        assert hashlib.sha256(archive.data).hexdigest() == entry["digest"]


def test_archive_has_the_chart_under_its_name_like_helm_package(client) -> None:
    data = client.get("/charts/postgresql-0.1.0.tgz").data
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(n.startswith("postgresql/") for n in names)
        assert {"postgresql/Chart.yaml", "postgresql/values.yaml", "postgresql/templates/secret.yaml"} <= set(names)
        member = tar.getmember("postgresql/Chart.yaml")
        assert member.mtime == chartrepo.ARCHIVE_MTIME and member.uid == 0 and member.isfile()
        extracted = tar.extractfile(member).read()
    assert extracted == (charts_dir() / "postgresql" / "Chart.yaml").read_bytes()


def test_packaging_twice_is_byte_identical_even_after_files_are_touched(tmp_path: Path) -> None:
    copy = shutil.copytree(charts_dir(), tmp_path / "charts")
    first = {c.filename: c.data for c in chartrepo.package_all(copy)}
    for path in copy.rglob("*"):
        os.utime(path, (1_800_000_000, 1_800_000_000))
    second = {c.filename: c.data for c in chartrepo.package_all(copy)}
    assert first == second
    assert list(first) == [f"{name}-0.1.0.tgz" for name in CHART_NAMES]


def test_a_changed_chart_is_served_with_a_new_digest(tmp_path: Path) -> None:
    copy = shutil.copytree(charts_dir(), tmp_path / "charts")
    before = {c.name: c.digest for c in chartrepo.served_charts(copy)}
    values = copy / "redis" / "values.yaml"
    values.write_text(values.read_text() + "\n# changed\n")
    after = {c.name: c.digest for c in chartrepo.served_charts(copy)}
    assert after["redis"] != before["redis"]
    assert {k: v for k, v in after.items() if k != "redis"} == {k: v for k, v in before.items() if k != "redis"}


def test_unknown_archive_is_404_and_etag_gives_304(client) -> None:
    assert client.get("/charts/nope-1.0.0.tgz").status_code == 404
    first = client.get("/charts/index.yaml")
    again = client.get("/charts/index.yaml", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_chart_whose_name_differs_from_its_directory_is_refused(tmp_path: Path) -> None:
    copy = shutil.copytree(charts_dir() / "redis", tmp_path / "charts" / "keydb")
    with pytest.raises(ValidationError, match=r"keydb/Chart.yaml: name"):
        chartrepo.package_chart(copy)


def test_cli_package_writes_the_repository_the_portal_serves(client, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["catalog", "package", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.yaml", *(f"{n}-0.1.0.tgz" for n in CHART_NAMES)])
    assert (out / "index.yaml").read_bytes() == client.get("/charts/index.yaml").data
    for name in CHART_NAMES:
        assert (out / f"{name}-0.1.0.tgz").read_bytes() == client.get(f"/charts/{name}-0.1.0.tgz").data

    absolute = CliRunner().invoke(
        main, ["catalog", "package", "--out", str(out), "--base-url", "https://portal.example.com/charts/"]
    )
    assert absolute.exit_code == 0, absolute.output
    urls = yaml.safe_load((out / "index.yaml").read_text())["entries"]["redis"][0]["urls"]
    assert urls == ["https://portal.example.com/charts/redis-0.1.0.tgz"]
