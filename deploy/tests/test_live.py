"""The binaries started with each deploy file's environment: they accept the values (not only
the names), come up, and serve every path the deploy files probe, scrape or route to.

Only what cannot work on a test machine is changed: listen addresses move to free loopback
ports, /var/lib/callbridge to a temporary directory, and a REDIS_URL to a redis-server started
for the test (the bridge connects at start). LiveKit is not running; the bridge needs it only
per call, and the agent's worker keeps retrying while its /health answers.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

import drift

DATA_DIR = "/var/lib/callbridge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@contextlib.contextmanager
def running(exe, args, env, log_path):
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def redis_server(tmp_path):
    """A throwaway redis-server on a free loopback port (Debian `redis-server`)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = tmp_path / "redis.log"
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    with running(exe, args, dict(os.environ), log) as proc:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield port


def wait_healthy(proc, base, log_path, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before answering /health:\n{log_path.read_text()[-3000:]}")
        try:
            last = status(base + "/health")
            if last == 200:
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"/health did not answer 200 within {deadline_s} s (last: {last}):\n{log_path.read_text()[-3000:]}")


def compose_env(deploy_dir) -> dict[str, dict[str, str]]:
    """Service → environment, as `docker-compose config` resolves it with .env.example."""
    out = subprocess.run(
        ["docker-compose", "--env-file", str(deploy_dir / ".env.example"), "-f", str(deploy_dir / "compose.yaml"),
         "--profile", "sip", "config"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    return {n: {k: str(v) for k, v in (s.get("environment") or {}).items()}
            for n, s in yaml.safe_load(out)["services"].items()}


def k8s_secret_values(deploy_dir) -> dict[tuple[str, str], str]:
    vals = {}
    for _, d in drift.k8s_docs(deploy_dir):
        if d.get("kind") == "Secret":
            for k, v in (d.get("stringData") or {}).items():
                vals[(d["metadata"]["name"], k)] = str(v)
    return vals


def sites_with_values(deploy_dir):
    """(label, Site, env with values) for every long-running binary the deploy files start."""
    resolved = compose_env(deploy_dir)
    secret = k8s_secret_values(deploy_dir)
    out = []
    for s in drift.compose_sites(deploy_dir):
        if s.subcommand is None:
            out.append((f"compose {s.extra['name']}", s, dict(resolved[s.extra["name"]])))
    for s in drift.k8s_sites(deploy_dir)[0]:
        if s.subcommand is not None:
            continue
        env = {}
        for e in s.extra["container"].get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = secret[(ref["name"], ref["key"])]
        out.append((f"k8s {s.where}", s, env))
    return out


def pytest_generate_tests(metafunc):
    if "site" in metafunc.fixturenames:
        from conftest import DEPLOY
        params = sites_with_values(DEPLOY)
        metafunc.parametrize("site", params, ids=[p[0] for p in params])


def test_binary_runs_with_deploy_env_and_serves_its_paths(site, bin_dir, deploy_dir, tmp_path):
    label, s, env = site
    listen_var = drift.LISTEN_VARS[s.binary]
    assert listen_var in env or s.binary == "bridge", f"{label}: {listen_var} is not set, nothing to probe"
    port = free_port()
    env[listen_var] = f"127.0.0.1:{port}"
    data = tmp_path / "data"
    data.mkdir()
    for k, v in env.items():
        if v.startswith(DATA_DIR):
            env[k] = str(data) + v[len(DATA_DIR):]
    stack = contextlib.ExitStack()
    if "REDIS_URL" in env:
        rport = stack.enter_context(redis_server(tmp_path))
        env["REDIS_URL"] = re.sub(r"^(redis://)[^/]*", rf"\g<1>127.0.0.1:{rport}", env["REDIS_URL"])
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
                "RUST_LOG": "info", **env}
    log = tmp_path / f"{s.binary}.log"
    base = f"http://127.0.0.1:{port}"
    with stack, running(bin_dir / s.binary, s.args, full_env, log) as proc:
        wait_healthy(proc, base, log)
        paths = drift.endpoints(deploy_dir)[s.binary]
        assert "/health" in paths
        for path in sorted(paths):
            code = status(base + path)
            assert code != 404, f"{label}: {s.binary} does not serve {path} (404)"
            if path == "/ready":
                assert code in (200, 503), f"{label}: /ready answered {code}"
            if path in ("/health", "/metrics"):
                assert code == 200, f"{label}: {path} answered {code}"
        # sanity: the probe really tells served from unserved paths
        assert status(base + "/no-such-path") == 404
    if s.binary == "bridge":
        # the bridge logs which shared state it uses between replicas: Redis when REDIS_URL is set
        want = "redis" if "REDIS_URL" in env else "livekit"
        assert re.search(rf'"shared_state":"{want}"', log.read_text()), log.read_text()[-2000:]
