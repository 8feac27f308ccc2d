"""Our own charts keep the contract the service stack relies on, checked from their files.

There is no helm binary here, so rendering is checked by the integration test that installs every
chart through the engine (tests/integration/test_catalog_charts.py); this checks the sources:
Chart.yaml versions, values.yaml defaults against the catalog's value specs, where password values go,
and what every manifest declares.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from portal.catalog import LOCAL_REPOSITORY, TemplateFile, default_catalog_dir, parse_template_file
from portal.charts import charts_dir, resolve_chart

CHARTS = charts_dir()
TEMPLATES = [parse_template_file(path) for path in sorted(default_catalog_dir().glob("*.yaml"))]
LOCAL = [t for t in TEMPLATES if t.chart.repository == LOCAL_REPOSITORY]
IDS = [t.slug for t in LOCAL]
UNDEFINED = object()


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return UNDEFINED
        node = node[part]
    return node


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def chart_values(template: TemplateFile) -> dict[str, Any]:
    """The chart's values.yaml with the template's `chart.values` on top (what a service starts from)."""
    own = yaml.safe_load((CHARTS / template.chart.name / "values.yaml").read_text())
    return merged(own, template.chart.values)


def manifests(template: TemplateFile) -> dict[str, str]:
    folder = CHARTS / template.chart.name / "templates"
    return {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}


def helpers(template: TemplateFile) -> dict[str, str]:
    text = (CHARTS / template.chart.name / "templates" / "_helpers.tpl").read_text()
    blocks = re.findall(r'\{\{-? define "([^"]+)" -?\}\}(.*?)\{\{-? end -?\}\}', text, flags=re.S)
    return dict(blocks)


def specs(template: TemplateFile):
    return template.values.required + template.values.optional


def test_every_template_uses_a_chart_of_ours() -> None:
    assert len(LOCAL) == len(TEMPLATES) >= 10


@pytest.mark.parametrize("template", LOCAL, ids=IDS)
def test_chart_exists_with_the_catalog_version(template: TemplateFile) -> None:
    meta = yaml.safe_load((CHARTS / template.chart.name / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == template.chart.name
    assert str(meta["version"]) == template.chart.version
    assert meta.get("dependencies") is None  # self-contained: installed from a path without any network
    ref = resolve_chart(template.chart.repository, template.chart.name, template.chart.version)
    assert ref.is_local and Path(ref.chart) == CHARTS / template.chart.name


@pytest.mark.parametrize("template", LOCAL, ids=IDS)
def test_values_defaults_match_the_template(template: TemplateFile) -> None:
    values = chart_values(template)
    assert values["service"]["port"] == template.default_port
    assert values["image"]["repository"] and values["image"]["tag"]
    assert values["persistence"]["enabled"] is True
    assert values["persistence"]["storageClass"] == ""
    assert re.fullmatch(r"\d+Gi", values["persistence"]["size"])
    for section in ("requests", "limits"):
        assert set(values["resources"][section]) == {"cpu", "memory"}, section
    for spec in specs(template):
        found = lookup(values, spec.key)
        assert found is not UNDEFINED, f"{spec.key} is not in {template.chart.name}/values.yaml"
        if spec.type == "password":
            assert found == "", f"{spec.key}: a password has no default in the chart"
        elif spec.default is not None:
            assert found == spec.default, f"{spec.key}: chart default {found!r}, catalog default {spec.default!r}"
        if spec.type == "boolean":
            assert isinstance(found, bool), spec.key
        if spec.type == "number":
            assert isinstance(found, int | float) and not isinstance(found, bool), spec.key
        if spec.type == "select":
            assert str(found) in (spec.options or []), spec.key


@pytest.mark.parametrize("template", LOCAL, ids=IDS)
def test_password_values_only_reach_the_chart_secret(template: TemplateFile) -> None:
    files = manifests(template)
    secret = files["secret.yaml"]
    assert "kind: Secret" in secret
    passwords = [spec.key for spec in specs(template) if spec.type == "password"]
    assert passwords, f"{template.slug} has no password value"
    for key in passwords:
        reference = re.compile(rf"\.Values\.{re.escape(key)}\b")
        assert reference.search(secret), f"{key} is not stored in the chart's Secret"
        elsewhere = [name for name, text in files.items() if name != "secret.yaml" and reference.search(text)]
        assert not elsewhere, f"{key} is used outside the Secret, in {elsewhere}"
    workloads = [text for text in files.values() if re.search(r"^kind: (Deployment|StatefulSet)$", text, re.M)]
    assert workloads
    assert any("secretKeyRef" in text for text in workloads)


@pytest.mark.parametrize("template", LOCAL, ids=IDS)
def test_manifests_keep_the_contract(template: TemplateFile) -> None:
    files = manifests(template)
    defined = helpers(template)
    assert not any(re.search(r"^kind: Ingress$", text, re.M) for text in files.values())

    service = files["service.yaml"]
    assert re.search(r"^  name: \{\{ \.Release\.Name \}\}$", service, re.M), "Service not named after the release"
    assert "port: {{ .Values.service.port }}" in service

    for name, text in files.items():
        # every object's labels come from a helper that sets the instance and name labels
        used = re.findall(r'^    \{\{- include "([^"]+)" \. \| nindent 4 \}\}$', text, re.M)
        assert used, f"{name}: no labels helper on the object"
        for helper in used:
            assert "app.kubernetes.io/instance: {{ .Release.Name }}" in defined[helper], f"{name}: {helper}"
            assert "app.kubernetes.io/name:" in defined[helper], f"{name}: {helper}"

    pvcs = [text for text in files.values() if "kind: PersistentVolumeClaim" in text]
    assert pvcs, "no PersistentVolumeClaim"
    for text in pvcs:
        assert text.startswith("{{- if .Values.persistence.enabled }}")
        assert "helm.sh/resource-policy: keep" in text
        # a storage class only when one is set: the cluster's default otherwise
        assert re.search(r"\{\{- with \.Values\.persistence\.storageClass \}\}\n\s+storageClassName:", text)

    workloads = [text for text in files.values() if re.search(r"^kind: (Deployment|StatefulSet)$", text, re.M)]
    for text in workloads:
        containers = len(re.findall(r"^\s+image: ", text, re.M))
        assert containers >= 1
        for probe in ("readinessProbe:", "livenessProbe:"):
            assert text.count(probe) == containers, probe
        assert (
            len(re.findall(r"^\s+resources:\n\s+\{\{- toYaml \.Values\.(\w+\.)?resources ", text, re.M)) == containers
        )
        assert "{{ .Values.image.repository }}:{{ .Values.image.tag }}" in text or "mariadb.image" in text


def test_every_chart_directory_is_used_by_a_template_or_is_the_test_chart() -> None:
    used = {t.chart.name for t in LOCAL}
    on_disk = {p.name for p in CHARTS.iterdir() if p.is_dir()}
    assert on_disk - used == {"hello"}
