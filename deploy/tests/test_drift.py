"""Deploy files against the binaries: no unknown or missing variables, ports and grace periods
that agree; and the check itself catches drift (mutated copies of deploy/ must fail)."""

import re
import shutil

import pytest
import yaml

import drift


def test_help_parsing_sees_env_defaults_and_required(binaries):
    bridge, agent = binaries["bridge"], binaries["agent"]
    assert bridge.default("BRIDGE_LISTEN") == "0.0.0.0:8080"
    assert bridge.accepts("TWILIO_AUTH_TOKEN") and bridge.accepts("DRAIN_SECONDS")
    assert "sip-setup" in bridge.subcommands
    # clap's required flags of the agent map to their variables
    assert {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"} <= agent.required_env(None)
    assert agent.accepts("AGENT_METRICS_LISTEN")
    # vendor keys are read by the provider code, not clap
    assert agent.accepts("DEEPGRAM_API_KEY") and agent.accepts("ELEVENLABS_VOICE_ID")
    assert not bridge.accepts("DEEPGRAM_API_KEY")
    assert binaries["devroom"].default("DEVROOM_LISTEN") == "127.0.0.1:7880"


def test_deploy_files_agree_with_binaries(deploy_dir, binaries, metric_names):
    problems = drift.check(deploy_dir, binaries, metric_names)
    assert problems == [], "\n".join(problems)


def test_every_binary_run_is_checked(deploy_dir):
    """The check sees the bridge and agent in both compose and Kubernetes (if it found none,
    it would pass vacuously)."""
    sites = drift.compose_sites(deploy_dir) + drift.k8s_sites(deploy_dir)[0]
    seen = {(s.file.split("/")[0], s.binary, s.subcommand) for s in sites}
    assert {("compose.yaml", "bridge", None), ("compose.yaml", "agent", None),
            ("compose.yaml", "bridge", "sip-setup"), ("k8s", "bridge", None), ("k8s", "agent", None)} <= seen


# ---- the check must fail on drift: mutate a copy of deploy/ ----


@pytest.fixture
def copy(deploy_dir, tmp_path):
    dst = tmp_path / "deploy"
    shutil.copytree(deploy_dir, dst, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    return dst


def edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def problems_of(copy, binaries, metric_names):
    return drift.check(copy, binaries, metric_names)


@pytest.mark.parametrize("file, old, new, expected", [
    # an unknown variable in compose
    ("compose.yaml", "      BRIDGE_LISTEN: 127.0.0.1:8080\n",
     "      BRIDGE_LISTEN: 127.0.0.1:8080\n      BRIDGE_FROBNICATE: \"1\"\n",
     "service bridge: BRIDGE_FROBNICATE is not a variable"),
    # an unknown variable in Kubernetes
    ("k8s/agent-deployment.yaml", "            - name: AGENT_MAX_JOBS\n",
     "            - name: AGENT_MAX_CALLS\n              value: \"3\"\n            - name: AGENT_MAX_JOBS\n",
     "Deployment agent, container agent: AGENT_MAX_CALLS is not a variable"),
    # a bridge variable given to the agent
    ("compose.yaml", "      AGENT_METRICS_LISTEN: 127.0.0.1:9100\n",
     "      AGENT_METRICS_LISTEN: 127.0.0.1:9100\n      MAX_CALLS: \"5\"\n",
     "service agent: MAX_CALLS is not a variable `agent --help` lists"),
], ids=["compose", "k8s", "wrong-binary"])
def test_unknown_variable_fails(copy, binaries, metric_names, file, old, new, expected):
    edit(copy / file, old, new)
    p = problems_of(copy, binaries, metric_names)
    assert any(expected in x for x in p), p


def test_missing_required_variable_fails(copy, binaries, metric_names):
    path = copy / "k8s" / "bridge-deployment.yaml"
    text = path.read_text()
    text = re.sub(r"            - name: TWILIO_AUTH_TOKEN\n(              .*\n)+?(?=            - name:)", "", text)
    path.write_text(text)
    p = problems_of(copy, binaries, metric_names)
    assert any("Deployment bridge, container bridge: TWILIO_AUTH_TOKEN is required and not set" in x for x in p), p


def test_port_mismatch_fails(copy, binaries, metric_names):
    edit(copy / "k8s" / "bridge-deployment.yaml", "              value: 0.0.0.0:8080", "              value: 0.0.0.0:8081")
    edit(copy / "compose.yaml", "BRIDGE_LISTEN: 127.0.0.1:8080", "BRIDGE_LISTEN: 127.0.0.1:8090")
    edit(copy / "compose.yaml", "REDIS_URL: redis://127.0.0.1:6379/1", "REDIS_URL: redis://127.0.0.1:6380/1")
    p = problems_of(copy, binaries, metric_names)
    assert any("service bridge: REDIS_URL redis://127.0.0.1:6380/1 is not the compose redis port 6379" in x for x in p), p
    assert any("listens on 8081 (BRIDGE_LISTEN) but declares no such containerPort" in x for x in p), p
    assert any("Caddyfile" in x and "reverse_proxy 127.0.0.1:8080" in x for x in p), p


def test_short_grace_period_fails(copy, binaries, metric_names):
    edit(copy / "k8s" / "bridge-deployment.yaml", "terminationGracePeriodSeconds: 630", "terminationGracePeriodSeconds: 300")
    edit(copy / "compose.yaml", "    stop_grace_period: 150s\n", "    stop_grace_period: 60s\n")
    p = problems_of(copy, binaries, metric_names)
    assert any("terminationGracePeriodSeconds 300 < drain deadline + preStop (605 s)" in x for x in p), p
    assert any("service agent: stop_grace_period 60.0 s is shorter than its drain deadline" in x for x in p), p


def test_dev_switch_and_secret_drift_fail(copy, binaries, metric_names):
    edit(copy / "compose.yaml", 'command: ["bridge"]', 'command: ["bridge", "--insecure-no-signature"]')
    edit(copy / "k8s" / "secret.yaml", "  GROQ_API_KEY: \"\"\n", "")
    p = problems_of(copy, binaries, metric_names)
    assert any("passes the development switch --insecure-no-signature" in x for x in p), p
    assert any("refers to key GROQ_API_KEY missing from Secret callbridge" in x for x in p), p


def test_env_example_drift_fails(copy, binaries, metric_names):
    edit(copy / ".env.example", "MAX_CALLS=100\n", "MAX_CALLS=100\nUNUSED_KNOB=1\n")
    edit(copy / ".env.example", "TWILIO_AUTH_TOKEN=change-me\n", "")
    p = problems_of(copy, binaries, metric_names)
    assert any(".env.example: UNUSED_KNOB is not used by compose.yaml" in x for x in p), p
    assert any("${TWILIO_AUTH_TOKEN} has no default and is not in .env.example" in x for x in p), p


def test_hpa_on_unknown_metric_fails(copy, binaries, metric_names):
    edit(copy / "k8s" / "optional" / "bridge-hpa-active-calls.yaml", "name: bridge_active_calls", "name: bridge_calls_active")
    p = problems_of(copy, binaries, metric_names)
    assert any("scales on bridge_calls_active, which no binary exports" in x for x in p), p


def test_dockerfile_env_and_expose_drift_fail(copy, binaries, metric_names):
    edit(copy / "Dockerfile", "EXPOSE 8080 9100", "ENV CALLBRIDGE_MODE=prod\nEXPOSE 8080")
    p = problems_of(copy, binaries, metric_names)
    assert any("ENV CALLBRIDGE_MODE is not a variable any binary lists" in x for x in p), p
    assert any("port 9100 is listened on but not EXPOSEd" in x for x in p), p


def test_seconds_parser():
    assert drift.seconds("630s") == 630 and drift.seconds("1m30s") == 90 and drift.seconds(120) == 120
    assert drift.seconds("4h") == 14400 and drift.seconds("soon") is None
