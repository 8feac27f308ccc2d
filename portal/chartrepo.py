"""Our own Helm charts (`catalog/charts/`) as a Helm chart repository: `index.yaml` plus one archive per chart.

Archives are what `helm package` makes — a gzipped tar whose top directory is the chart name — but
deterministic: sorted entries, fixed times, owners and modes, no gzip name or time, so the same
chart files always give the same bytes and the same sha256 digest. The portal serves them at
`/charts/` (a plain blueprint, public and read-only like any chart repository) and
`kaiden catalog package --out DIR` writes them for a static file server.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, abort, request

from portal.charts import charts_dir
from portal.errors import ValidationError

ARCHIVE_MTIME = 946_684_800  # 2000-01-01T00:00:00Z, the time of every archive entry
INDEX_API_VERSION = "v1"


@dataclass(frozen=True)
class PackagedChart:
    """One chart archive and the Chart.yaml metadata its index entry is made of."""

    name: str
    version: str
    metadata: dict[str, Any]
    data: bytes
    created: datetime  # newest file time of the chart directory: when the chart last changed

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def chart_files(chart: Path) -> list[Path]:
    """The files a chart archive holds, sorted: everything but hidden files and folders and packaged archives."""
    files = []
    for path in chart.rglob("*"):
        relative = path.relative_to(chart)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or path.suffix == ".tgz":
            continue
        files.append(relative)
    return sorted(files, key=lambda p: p.as_posix())


def read_chart_metadata(chart: Path) -> dict[str, Any]:
    """Chart.yaml of `chart`, checked to name this directory and carry a version."""
    where = f"{chart.name}/Chart.yaml"
    try:
        metadata = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(f"{where}: not readable", fields={where: exc.__class__.__name__}) from None
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: expected a mapping", fields={where: "expected a mapping"})
    for key in ("apiVersion", "name", "version"):
        if not metadata.get(key):
            raise ValidationError(f"{where}: {key}: missing", fields={f"{where}: {key}": "missing"})
    if metadata["name"] != chart.name:
        message = f"must equal the directory name ({chart.name!r})"
        raise ValidationError(f"{where}: name: {message}", fields={f"{where}: name": message})
    metadata["version"] = str(metadata["version"])
    return metadata


def package_chart(chart: Path) -> PackagedChart:
    """The deterministic `helm package` archive of the chart directory `chart`."""
    metadata = read_chart_metadata(chart)
    files = chart_files(chart)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for relative in files:
            content = (chart / relative).read_bytes()
            info = tarfile.TarInfo(f"{chart.name}/{relative.as_posix()}")
            info.size = len(content)
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    newest = max((chart / f).stat().st_mtime for f in files)
    return PackagedChart(
        name=metadata["name"],
        version=metadata["version"],
        metadata=metadata,
        data=compressed.getvalue(),
        created=datetime.fromtimestamp(int(newest), UTC),
    )


def package_all(directory: Path | None = None) -> list[PackagedChart]:
    """Every chart under `directory` (default `catalog/charts/`), by name."""
    root = directory or charts_dir()
    charts = sorted(p for p in root.iterdir() if p.is_dir() and (p / "Chart.yaml").is_file())
    return [package_chart(chart) for chart in charts]


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_index(charts: list[PackagedChart], base_url: str = "") -> dict[str, Any]:
    """A Helm repository index (`apiVersion: v1`, `entries`, `generated`); urls relative unless `base_url`."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for chart in charts:
        entry = dict(chart.metadata)
        entry.update(
            urls=[f"{base_url.rstrip('/')}/{chart.filename}" if base_url else chart.filename],
            created=_timestamp(chart.created),
            digest=chart.digest,
        )
        entries.setdefault(chart.name, []).append(entry)
    generated = max((c.created for c in charts), default=datetime.fromtimestamp(ARCHIVE_MTIME, UTC))
    return {"apiVersion": INDEX_API_VERSION, "entries": entries, "generated": _timestamp(generated)}


def index_yaml(charts: list[PackagedChart], base_url: str = "") -> bytes:
    return yaml.safe_dump(build_index(charts, base_url), sort_keys=False).encode()


def write_repository(out: Path, directory: Path | None = None, base_url: str = "") -> list[Path]:
    """Write `index.yaml` and every chart archive into `out` (each written to a temp name, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    charts = package_all(directory)
    written = []
    for name, data in [*((c.filename, c.data) for c in charts), ("index.yaml", index_yaml(charts, base_url))]:
        target = out / name
        partial = out / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(target)
        written.append(target)
    return written


# ---------------------------------------------------------------- served by the portal

blueprint = Blueprint("chartrepo", __name__, url_prefix="/charts")
_cache_lock = threading.Lock()
_cache: dict[str, Any] = {"key": None, "charts": []}


def _signature(root: Path) -> tuple:
    """Changes whenever a chart file is added, removed or modified."""
    return tuple(
        (path.as_posix(), stat.st_mtime_ns, stat.st_size)
        for path in sorted(root.rglob("*"))
        if path.is_file() and (stat := path.stat())
    )


def served_charts(directory: Path | None = None) -> list[PackagedChart]:
    """The packaged charts, rebuilt only when a file under the charts directory changed."""
    root = directory or charts_dir()
    key = (str(root), _signature(root))
    with _cache_lock:
        if _cache["key"] != key:
            _cache["charts"] = package_all(root)
            _cache["key"] = key
        return _cache["charts"]


def _conditional(body: bytes, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.set_etag(hashlib.sha256(body).hexdigest())
    response.cache_control.public = True
    response.cache_control.max_age = 60
    return response.make_conditional(request)


@blueprint.get("/index.yaml")
def repository_index() -> Response:
    """The repository index: `helm repo add kaiden <portal>/charts`."""
    return _conditional(index_yaml(served_charts()), "application/x-yaml")


@blueprint.get("/<string:filename>")
def chart_archive(filename: str) -> Response:
    """One chart archive, `<name>-<version>.tgz`, as listed in the index."""
    for chart in served_charts():
        if chart.filename == filename:
            return _conditional(chart.data, "application/gzip")
    abort(404)
