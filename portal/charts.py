"""Where a template's Helm chart comes from: our own charts under `catalog/charts/`, or a public repository.

The one place that turns a template's chart spec into what Helm (through the Pulumi Kubernetes
provider) needs. Charts in `catalog/charts/<name>` are used from disk by path; the chart repository
the portal serves for outside Helm users is built from the same directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from portal.errors import ValidationError

LOCAL_REPOSITORY = "local"


def charts_dir() -> Path:
    """`catalog/charts/` of this checkout."""
    return Path(__file__).resolve().parent.parent / "catalog" / "charts"


@dataclass(frozen=True)
class ChartRef:
    """A chart Helm can install: `chart` is an absolute directory for local charts, else the chart name in `repo`."""

    chart: str
    version: str
    repo: str | None = None  # None: `chart` is a local directory

    @property
    def is_local(self) -> bool:
        return self.repo is None


def local_chart_version(name: str, directory: Path | None = None) -> str:
    """The version in `catalog/charts/<name>/Chart.yaml`; `ValidationError` naming the chart when missing."""
    chart_file = (directory or charts_dir()) / name / "Chart.yaml"
    try:
        meta = yaml.safe_load(chart_file.read_text())
    except FileNotFoundError:
        raise ValidationError(f"chart {name!r} not found", fields={"chart.name": f"no {chart_file}"}) from None
    version = str((meta or {}).get("version", ""))
    if not version:
        raise ValidationError(f"{chart_file}: no version", fields={"chart.version": "missing in Chart.yaml"})
    return version


def resolve_chart(repository: str, name: str, version: str, directory: Path | None = None) -> ChartRef:
    """The chart for a template's (repository, chart name, version); a local chart must have that version."""
    if repository == LOCAL_REPOSITORY:
        found = local_chart_version(name, directory)
        if found != version:
            message = f"chart {name!r} is version {found} on disk, not {version}"
            raise ValidationError(message, fields={"chart.version": message})
        return ChartRef(chart=str((directory or charts_dir()) / name), version=version)
    return ChartRef(chart=name, version=version, repo=repository)
