"""The deployment files agree with the code: config keys, metric names, promtool, unit hardening.

Fast and token-free. promtool (Debian package ``prometheus``) is required, not optional: CI
installs it with ``./softhsm_setup.sh --test-tools``.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signer import config
from signer.service.metrics import KeyGaugeRow, LiveState, Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PRODUCTION = ROOT / "hsm_config" / "production.toml"
RULES = DEPLOY / "prometheus" / "signer-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "signer-alerts.test.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus-scrape.yml"
DASHBOARD = DEPLOY / "grafana" / "signer-dashboard.json"
UNIT = DEPLOY / "systemd" / "signer.service"

METRIC_TOKEN = re.compile(r"\bsigner_[a-z0-9_]+\b")
# Labels Prometheus adds to every series, and the bucket label of histograms.
TARGET_LABELS = {"job", "instance", "le"}
IDENTITY = re.compile(r"^(CN=.+|URI:\S+|DNS:\S+|SHA256:(?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2})$")


# -- metric names from the code ------------------------------------------------------------------


def _sample_value(annotation: str) -> Any:
    """A non-empty value for a LiveState/KeyGaugeRow field, so every optional metric appears."""
    if annotation.startswith("tuple"):
        return (_build(KeyGaugeRow),)
    return {"int": 1, "bool": True, "str": "x"}.get(annotation, 1.0)


def _build(cls: Any) -> Any:
    return cls(**{f.name: _sample_value(str(f.type)) for f in dataclasses.fields(cls)})


def _exported() -> dict[str, set[str]]:
    """Every series name the daemon can export -> its label names (without job/instance)."""
    metrics = Metrics()
    metrics.watch(lambda: _build(LiveState))
    names: dict[str, set[str]] = {}
    for collector in list(metrics.registry._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
            }.get(family.type, ("",))
            found = labels | {k for s in family.samples for k in s.labels}
            for suffix in suffixes:
                names.setdefault(family.name + suffix, set()).update(found - {"le"})
    return names


EXPORTED = _exported()


def test_exported_names_cover_every_name_in_metrics_source() -> None:
    source = (ROOT / "signer" / "service" / "metrics.py").read_text(encoding="utf-8")
    declared = set(re.findall(r'"(signer_[a-z0-9_]+)"', source))
    families = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in EXPORTED} | set(
        EXPORTED
    )
    assert declared <= families, f"metrics.py names not collected: {declared - families}"
    assert "signer_audit_last_checkpoint_timestamp_seconds" in EXPORTED
    assert "signer_requests_total" in EXPORTED
    assert "signer_request_duration_seconds_bucket" in EXPORTED


def _check_metric_references(text: str, where: str) -> set[str]:
    used = set(METRIC_TOKEN.findall(text))
    unknown = used - set(EXPORTED)
    assert not unknown, f"{where} uses metric names metrics.py does not export: {sorted(unknown)}"
    for name, matchers in re.findall(r"\b(signer_[a-z0-9_]+)\{([^}]*)\}", text):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            allowed = EXPORTED[name] | TARGET_LABELS
            assert label in allowed, f"{where}: {name} has no label {label!r} ({sorted(allowed)})"
    return used


# -- production.toml -----------------------------------------------------------------------------


def test_production_config_loads_with_mtls_and_dual_control() -> None:
    s = config.load(PRODUCTION)
    tls = s.server.tls
    assert tls.enabled and tls.key is not None and tls.client_ca is not None
    assert tls.insecure_loopback is False
    host = s.server.listen.rpartition(":")[0]
    assert host not in {"127.0.0.1", "localhost", "[::1]"}, "production example must show mTLS"
    assert s.keys.approvals_required >= 2
    assert s.keys.dev is False
    assert s.keys.csca_cert is not None
    assert s.audit.enabled and s.audit.directory.is_absolute()
    assert s.log.json is True
    assert s.hsm.pin_file is not None and s.hsm.pin_file.parent == Path("/etc/signer")
    assert s.hsm.softhsm_conf is None, "production uses a vendor PKCS#11 module"
    assert s.metrics.listen and s.metrics.listen.rpartition(":")[0] != host
    assert s.quota.burst >= s.server.max_batch, "full-size batches would always be refused"
    for role in ("issuer", "officer", "auditor"):
        identities = getattr(s.roles, role)
        assert identities, f"no example identity for role {role}"
        for identity in identities:
            assert IDENTITY.match(identity), f"{identity!r} is not a valid identity form"
    assert set(s.roles.issuer).isdisjoint(s.roles.officer)


def _documented_keys(text: str) -> set[str]:
    """``table.key`` for every key set or shown commented out (``# key = ...``) in the file."""
    section = ""
    found = set()
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[([\w.]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        setting = re.match(r"^#?\s*([a-z][a-z0-9_.-]*)\s*=\s*(?:[\"\[]|-?\d|true|false)", line)
        if setting:
            found.add(f"{section}.{setting.group(1)}" if section else setting.group(1))
    return found


@pytest.fixture
def accepted_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Every key the loader reads (recorded while it reads the production file)."""
    seen: set[str] = set()
    original = config._Reader._get

    def recording(self: Any, key: str, kind: Any, default: Any) -> Any:
        if kind is not dict:
            seen.add(self._name(key))
        return original(self, key, kind, default)

    monkeypatch.setattr(config._Reader, "_get", recording)
    config.load(PRODUCTION)
    yield seen


def test_production_config_documents_every_setting(accepted_keys: set[str]) -> None:
    documented = _documented_keys(PRODUCTION.read_text(encoding="utf-8"))
    missing = accepted_keys - documented
    assert not missing, f"production.toml does not show these settings: {sorted(missing)}"
    invented = documented - accepted_keys
    assert not invented, f"production.toml shows settings the loader does not know: {invented}"


# -- Prometheus ----------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed; run ./softhsm_setup.sh --test-tools "
            "(installs the Debian package 'prometheus', which provides promtool)"
        )
    return path


def _run(*args: str | Path, cwd: Path | None = None) -> None:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"


def test_promtool_checks_rules_rule_tests_and_scrape_config() -> None:
    promtool = _promtool()
    _run(promtool, "check", "rules", RULES)
    _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    _run(promtool, "check", "config", SCRAPE.name, cwd=SCRAPE.parent)


def _alert_blocks(text: str) -> dict[str, str]:
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def test_alert_rules_use_only_real_metrics_and_tell_oncall_what_to_do() -> None:
    text = RULES.read_text(encoding="utf-8")
    used = _check_metric_references(text, RULES.name)
    alerts = _alert_blocks(text)
    for name, block in alerts.items():
        assert re.search(r"severity: (critical|warning|info)\b", block), f"{name}: severity"
        for annotation in ("summary", "description", "runbook"):
            assert f"{annotation}:" in block, f"{name} has no {annotation} annotation"
    for expected in (
        "SignerHsmDown",
        "SignerHsmWorkerRestarts",
        "SignerAuditUnhealthy",
        "SignerAuditAppendFailures",
        "SignerAuditCheckpointStale",
        "SignerKeyExpiringSoon",
        "SignerKeyExpiryImminent",
        "SignerNotServing",
        "SignerServerErrorRatio",
        "SignerSignBatchLatencyHigh",
        "SignerAuthRefusalsSpike",
        "SignerQuotaRejections",
        "SignerKeyRecordRejected",
        "SignerKeyRevoked",
    ):
        assert expected in alerts
    for metric in (
        "signer_hsm_up",
        "signer_hsm_workers_up",
        "signer_audit_healthy",
        "signer_audit_failures_total",
        "signer_audit_last_checkpoint_timestamp_seconds",
        "signer_key_signing_remaining_seconds",
        "signer_serving",
        "signer_requests_total",
        "signer_request_duration_seconds_bucket",
        "signer_auth_refusals_total",
        "signer_quota_rejections_total",
    ):
        assert metric in used


# -- Grafana -------------------------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_is_valid_and_has_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert panel["targets"], f"panel {panel['title']!r} has no query"
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in (
        "signatures/s by profile and kid",
        "requests/s by method and code",
        "errors/s by method and code",
        "latency p50 / p99 by method",
        "batch size",
        "hsm sign latency",
        "signing workers",
        "worker restarts",
        "audit append latency",
        "audit last sequence",
        "checkpoint age",
        "auth refusals",
        "quota rejections",
        "keys on the token",
        "days until each key must stop signing",
    ):
        assert wanted in titles, f"no panel {wanted!r}"
    used = _check_metric_references("\n".join(_dashboard_exprs(dashboard)), DASHBOARD.name)
    assert "signer_key_info" in used and "signer_signatures_total" in used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$instance": ".*"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, expr in enumerate(_dashboard_exprs(dashboard)):
        if expr.startswith("label_values("):
            expr = expr[len("label_values(") :].rsplit(",", 1)[0]
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        lines += [f"      - record: dashboard:query_{number}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(promtool, "check", "rules", rules)


# -- systemd -------------------------------------------------------------------------------------


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_systemd_unit_is_hardened() -> None:
    service = _unit()["Service"]
    expected = {
        "User": "signer",
        "Group": "signer",
        "ExecStart": "/opt/signer/.venv/bin/signer serve --config /etc/signer/signer.toml",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "StateDirectory": "signer",
        "ConfigurationDirectory": "signer",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "UMask": "0077",
        "LimitCORE": "0",
        "KillMode": "mixed",
        "EnvironmentFile": "-/etc/signer/signer.env",
    }
    for key, value in expected.items():
        assert service.get(key) == value, f"[Service] {key}={service.get(key)!r}, want {value!r}"
    assert "RestartSec" in service and "TimeoutStopSec" in service
    writable = service["ReadWritePaths"].split()
    assert "/var/lib/signer" in writable
    audit_dir = config.load(PRODUCTION).audit.directory
    assert any(audit_dir.is_relative_to(p) for p in writable), "audit dir must be writable"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The real ExecStart only exists on an installed appliance.
    text = UNIT.read_text(encoding="utf-8").replace("/opt/signer/.venv/bin/signer", "/bin/true")
    copy = tmp_path / "signer.service"
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in result.stderr.splitlines() if str(copy) in line]
    assert result.returncode == 0 and not complaints, result.stderr
