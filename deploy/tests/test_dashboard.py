"""The Grafana dashboard queries the metrics the binaries export, every one of them, in valid
PromQL (promtool, from Debian's `prometheus` package, parses each query as a recording rule)."""

import re
import shutil
import subprocess

import pytest
import yaml

import drift


@pytest.fixture(scope="module")
def dashboard(deploy_dir):
    return drift.load_json(deploy_dir / "grafana" / "callbridge.json")


def test_dashboard_uses_only_exported_metrics(dashboard, metric_names):
    unknown = drift.dashboard_metrics(dashboard) - metric_names
    assert not unknown, f"the dashboard queries metrics no binary exports: {sorted(unknown)}"


def test_dashboard_shows_every_exported_metric(dashboard, metric_names):
    missing = metric_names - drift.dashboard_metrics(dashboard)
    assert not missing, f"add a panel to deploy/grafana/callbridge.json for: {sorted(missing)}"


def test_metric_names_are_found(metric_names):
    # guards the source scan: if it broke, the two tests above would compare empty sets
    assert {"bridge_active_calls", "bridge_calls_total", "bridge_errors_total",
            "agent_calls_active", "agent_turn_stage_seconds"} <= metric_names


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = []
    for p in dashboard["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    names = {v["name"] for v in dashboard["templating"]["list"]}
    used = set()
    for _, expr in drift.dashboard_exprs(dashboard):
        used |= set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}
    assert used <= names, f"queries use undefined variables {used - names}"


def test_queries_are_valid_promql(dashboard, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus")
    rules = []
    for i, (title, expr) in enumerate(drift.dashboard_exprs(dashboard)):
        if expr.startswith("label_values("):
            m = re.fullmatch(r"label_values\((\w+), *\w+\)", expr)
            assert m, f"{title}: {expr}"
            expr = m.group(1)
        expr = expr.replace("$__rate_interval", "5m")
        expr = re.sub(r"\$\w+", ".*", expr)
        rules.append({"record": f"callbridge:dashboard:q{i}", "expr": expr})
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
