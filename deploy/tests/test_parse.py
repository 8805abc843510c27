"""Everything under deploy/ parses: YAML (every document), JSON, .env.example lines."""

import json
import re

import yaml


def test_yaml_and_json_parse(deploy_dir):
    files = [p for p in deploy_dir.rglob("*") if p.is_file() and "tests" not in p.relative_to(deploy_dir).parts]
    yamls = [p for p in files if p.suffix in (".yaml", ".yml")] + [deploy_dir / ".hadolint.yaml"]
    jsons = [p for p in files if p.suffix == ".json"]
    assert len(yamls) >= 15 and jsons, (yamls, jsons)
    for p in yamls:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, f"{p}: no YAML document"
        assert all(isinstance(d, dict) for d in docs), f"{p}: a document is not a mapping"
    for p in jsons:
        json.loads(p.read_text())


def test_k8s_manifests_have_kind_and_name(deploy_dir):
    for p in (deploy_dir / "k8s").rglob("*.yaml"):
        for d in yaml.safe_load_all(p.read_text()):
            assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], p


def test_env_example_is_key_value(deploy_dir):
    for n, line in enumerate((deploy_dir / ".env.example").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"]*", line), f".env.example:{n}: {line!r}"


def test_no_real_secret_in_examples(deploy_dir):
    """Example files carry placeholders only."""
    env = (deploy_dir / ".env.example").read_text()
    assert re.search(r"^TWILIO_AUTH_TOKEN=change-me$", env, re.M)
    secret = yaml.safe_load((deploy_dir / "k8s" / "secret.yaml").read_text())
    for k, v in secret["stringData"].items():
        assert v in ("", "change-me") or "xxxx" in v or v.startswith("change-me"), f"secret.yaml {k} is not a placeholder"
