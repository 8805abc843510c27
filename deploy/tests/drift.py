"""What the deploy files say against what the binaries accept.

The binaries are the source of truth: their `--help` (clap prints `[env: NAME=…]` and
`[default: …]` for every setting) and, for the agent's vendor providers, the variable names its
code reads. `check(deploy_dir, binaries)` returns a list of problems (empty = no drift):

- every variable a deploy file sets for a binary is one that binary accepts;
- every variable a production run needs is set (clap's required ones and REQUIRED below);
- ports agree: the port a binary listens on (its *_LISTEN variable or the default from --help)
  is the container port, the probe port, the Service target, the Caddy upstream;
- grace periods cover the drain deadlines;
- Secret keys, compose `${VARS}` and `.env.example`, Services/Ingress/HPA/PDB/ServiceMonitor
  references all resolve.

`endpoints(deploy_dir)` lists the HTTP paths deploy files expect each binary to serve; the live
test (test_live.py) asks the running binaries for them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import yaml

BINARIES = ("bridge", "agent", "devroom")

# What a production run needs beyond clap's own required flags (design.md: the bridge refuses
# to start without TWILIO_AUTH_TOKEN or the LiveKit key/secret; PUBLIC_URL is what Twilio
# signs; the account SID is the REST API's path). Keyed by (binary, subcommand).
REQUIRED = {
    ("bridge", None): {
        "PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
        "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET",
    },
    ("bridge", "sip-setup"): {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"},
    ("agent", None): {"LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"},
}
# Development switches no deploy file may pass.
FORBIDDEN_ARGS = {"--insecure-no-signature", "--dev"}
# The agent's drain deadline when the binary does not list AGENT_DRAIN_TIMEOUT (design.md).
AGENT_DRAIN_DEFAULT_SECS = 120
# Variables a listen address comes from, per binary.
LISTEN_VARS = {"bridge": "BRIDGE_LISTEN", "agent": "AGENT_METRICS_LISTEN", "devroom": "DEVROOM_LISTEN"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}


# ---------------------------------------------------------------- binaries


@dataclasses.dataclass
class Option:
    flag: str
    env: str | None
    default: str | None


@dataclasses.dataclass
class Binary:
    name: str
    options: dict[str, Option]  # by flag
    required_flags: set[str]
    subcommands: set[str]
    extra_env: set[str]  # read by the code outside clap (vendor providers)

    @property
    def env(self) -> dict[str, Option]:
        return {o.env: o for o in self.options.values() if o.env}

    def accepts(self, name: str) -> bool:
        return name in self.env or name in self.extra_env

    def default(self, name: str) -> str | None:
        o = self.env.get(name)
        return o.default if o else None

    def required_env(self, subcommand: str | None) -> set[str]:
        clap = {self.options[f].env for f in self.required_flags if f in self.options and self.options[f].env}
        return clap | REQUIRED.get((self.name, subcommand), set())


_HEADER = re.compile(r"^\s{2,}(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)", re.M)


def parse_help(name: str, text: str, extra_env: set[str] = frozenset()) -> Binary:
    """Options of a clap `--help` page (long or short form)."""
    options: dict[str, Option] = {}
    heads = list(_HEADER.finditer(text))
    for i, m in enumerate(heads):
        block = text[m.start(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        env = re.search(r"\[env: ([A-Z][A-Z0-9_]*)", block)
        default = re.search(r"\[default: ([^\]]*)\]", block)
        d = default.group(1) if default else None
        if d is not None and len(d) >= 2 and d[0] == d[-1] == '"':
            d = d[1:-1]
        options[m.group(1)] = Option(m.group(1), env.group(1) if env else None, d)
    usage = re.search(r"^Usage: \S+ (.*)$", text, re.M)
    required = set(re.findall(r"--([a-z0-9-]+) <", usage.group(1))) if usage else set()
    subcommands = set()
    cmds = re.search(r"^Commands:\n((?:  \S.*\n?)+)", text, re.M)
    if cmds:
        subcommands = {line.split()[0] for line in cmds.group(1).splitlines() if line.strip()} - {"help"}
    return Binary(name, options, required, subcommands, set(extra_env))


def source_env_names(src_dir: Path) -> set[str]:
    """Variable names a crate's code reads itself (not through clap): `std::env::var("X")` and
    the provider lookups `get("X")` / `key("X")` / `env("X")` / `has("X")`; binaries under
    src/bin/ (the demo) excluded. RUST_LOG when the crate uses tracing's EnvFilter."""
    names: set[str] = set()
    pat = re.compile(r'\b(?:var|var_os|get|key|env|has)\("([A-Z][A-Z0-9_]+)"\)')
    for f in src_dir.rglob("*.rs"):
        if "bin" in f.relative_to(src_dir).parts[:-1]:
            continue
        text = f.read_text()
        names |= set(pat.findall(text))
        if "from_default_env" in text:
            names.add("RUST_LOG")
    return names


def load_binaries(bin_dir: Path, repo: Path) -> dict[str, Binary]:
    out = {}
    for name in BINARIES:
        exe = bin_dir / name
        text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
        out[name] = parse_help(name, text, source_env_names(repo / name / "src"))
    return out


# ---------------------------------------------------------------- deploy files


@dataclasses.dataclass
class Site:
    """One place a deploy file runs one of our binaries."""
    file: str
    where: str
    binary: str
    subcommand: str | None
    args: list[str]
    env: dict[str, str | None]  # None: from a Secret or the downward API
    extra: dict  # per-format details (k8s pod spec, compose service)


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _split_command(cmd, binaries) -> tuple[str | None, str | None, list[str]]:
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not cmd:
        return None, None, []
    exe = Path(str(cmd[0])).name
    if exe not in binaries:
        return None, None, list(cmd)
    rest = [str(a) for a in cmd[1:]]
    sub = rest[0] if rest and not rest[0].startswith("-") else None
    return exe, sub, rest


def compose_sites(deploy: Path) -> list[Site]:
    path = deploy / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    sites = []
    for name, svc in (doc.get("services") or {}).items():
        exe, sub, args = _split_command(svc.get("command"), BINARIES)
        if exe is None:
            continue
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        env = {k: (None if v is None else str(v)) for k, v in env.items()}
        sites.append(Site("compose.yaml", f"service {name}", exe, sub, args, env, {"service": svc, "name": name}))
    return sites


def k8s_docs(deploy: Path) -> list[tuple[str, dict]]:
    out = []
    for f in sorted((deploy / "k8s").rglob("*.yaml")):
        for d in _yaml_docs(f):
            out.append((str(f.relative_to(deploy)), d))
    return out


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return (spec.get("template") or {}).get("spec")


def pod_labels(doc: dict) -> dict:
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def k8s_sites(deploy: Path) -> tuple[list[Site], list[str]]:
    sites, problems = [], []
    for file, doc in k8s_docs(deploy):
        ps = pod_spec(doc)
        if ps is None:
            continue
        for c in (ps.get("containers") or []) + (ps.get("initContainers") or []):
            where = f"{doc['kind']} {doc['metadata']['name']}, container {c.get('name')}"
            exe, sub, args = _split_command(c.get("command"), BINARIES)
            if exe is None:
                if "callbridge" in str(c.get("image", "")):
                    problems.append(f"{file}: {where}: runs the callbridge image without naming the binary in `command`")
                continue
            args += [str(a) for a in c.get("args") or []]
            if c.get("envFrom"):
                problems.append(f"{file}: {where}: envFrom hides variable names from this check; list them under env")
            env = {}
            for e in c.get("env") or []:
                env[e["name"]] = str(e["value"]) if "value" in e else None
            sites.append(Site(file, where, exe, sub, args, env, {"pod": ps, "container": c, "doc": doc}))
    return sites, problems


def dockerfile_env(deploy: Path) -> dict[str, str]:
    """ENV of the runtime (last) stage."""
    text = (deploy / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM\s", text, flags=re.M)
    env = {}
    for line in stages[-1].splitlines():
        m = re.match(r"\s*ENV\s+(.*)", line)
        if not m:
            continue
        body = m.group(1).strip()
        if "=" not in body.split()[0]:
            k, _, v = body.partition(" ")
            env[k] = v.strip()
        else:
            for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', body):
                env[k] = v.strip('"')
    return env


def dockerfile_expose(deploy: Path) -> set[int]:
    ports = set()
    for m in re.finditer(r"^EXPOSE\s+(.*)$", (deploy / "Dockerfile").read_text(), re.M):
        ports |= {int(p.split("/")[0]) for p in m.group(1).split()}
    return ports


def dockerfile_runtime_packages(deploy: Path) -> set[str]:
    """Debian packages `apt-get install`ed in the runtime (last) stage."""
    text = (deploy / "Dockerfile").read_text().replace("\\\n", " ")
    last = re.split(r"^FROM\s", text, flags=re.M)[-1]
    pkgs = set()
    for m in re.finditer(r"apt-get install ([^&;]*)", last):
        pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


# ---------------------------------------------------------------- helpers


def port_of(addr: str | None) -> int | None:
    if not addr:
        return None
    m = re.search(r":(\d+)$", addr.strip())
    return int(m.group(1)) if m else None


def url_port(url: str) -> int | None:
    m = re.match(r"(wss?|https?)://(\[[^\]]+\]|[^/:]+)(?::(\d+))?", url)
    if not m:
        return None
    if m.group(3):
        return int(m.group(3))
    return 443 if m.group(1) in ("wss", "https") else 80


def url_host(url: str) -> str | None:
    m = re.match(r"\w+://(\[[^\]]+\]|[^/:]+)", url)
    return m.group(1) if m else None


def seconds(v) -> float | None:
    """`630`, `630s`, `10m`, `1m30s`, `4h` → seconds."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        pos = m.end()
    return total if pos == len(s) and pos else None


def listen_ports(site: Site, b: Binary) -> set[int]:
    var = LISTEN_VARS.get(site.binary)
    if var is None:
        return set()
    addr = site.env.get(var) or b.default(var)
    p = port_of(addr)
    return {p} if p is not None else set()


def drain_seconds(site: Site, b: Binary) -> float:
    if site.binary == "bridge":
        return seconds(site.env.get("DRAIN_SECONDS") or b.default("DRAIN_SECONDS") or 0) or 0.0
    if site.binary == "agent":
        v = site.env.get("AGENT_DRAIN_TIMEOUT") or b.default("AGENT_DRAIN_TIMEOUT")
        return seconds(v) if v else float(AGENT_DRAIN_DEFAULT_SECS)
    return 0.0


def prestop_seconds(container: dict) -> float:
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return float(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] == "sleep":
        return seconds(cmd[1]) or 0.0
    return 0.0


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- the check


def check(deploy: Path, binaries: dict[str, Binary], metric_names: set[str] | None = None) -> list[str]:
    problems: list[str] = []
    sites = compose_sites(deploy)
    ks, kp = k8s_sites(deploy)
    sites += ks
    problems += kp

    for s in sites:
        b = binaries[s.binary]
        for name in sorted(s.env):
            if not b.accepts(name):
                problems.append(f"{s.file}: {s.where}: {name} is not a variable `{s.binary} --help` lists")
        if s.subcommand is not None and s.subcommand not in b.subcommands:
            problems.append(f"{s.file}: {s.where}: `{s.binary} {s.subcommand}` is not a subcommand")
        for name in sorted(b.required_env(s.subcommand) - set(s.env)):
            problems.append(f"{s.file}: {s.where}: {name} is required and not set")
        if s.binary == "bridge" and s.subcommand is None and s.env.get("BRIDGE_MODE") == "sip" and not s.env.get("LIVEKIT_SIP_HOST"):
            problems.append(f"{s.file}: {s.where}: BRIDGE_MODE=sip without LIVEKIT_SIP_HOST")
        for a in s.args:
            if a.split("=")[0] in FORBIDDEN_ARGS:
                problems.append(f"{s.file}: {s.where}: passes the development switch {a}")

    problems += _check_dockerfile(deploy, binaries, sites)
    problems += _check_compose(deploy, binaries, [s for s in sites if s.file == "compose.yaml"])
    problems += _check_k8s(deploy, binaries, [s for s in sites if s.file != "compose.yaml"], metric_names)
    return problems


def _check_dockerfile(deploy: Path, binaries: dict[str, Binary], sites: list[Site]) -> list[str]:
    problems = []
    for name in dockerfile_env(deploy):
        if name not in ("PATH", "LANG", "LC_ALL", "TZ") and not any(b.accepts(name) for b in binaries.values()):
            problems.append(f"Dockerfile: ENV {name} is not a variable any binary lists")
    exposed = dockerfile_expose(deploy)
    wanted = {p for s in sites for p in listen_ports(s, binaries[s.binary]) if s.subcommand is None}
    wanted.add(port_of(binaries["bridge"].default("BRIDGE_LISTEN")))
    for p in sorted(wanted - exposed):
        problems.append(f"Dockerfile: port {p} is listened on but not EXPOSEd")
    for p in sorted(exposed - wanted):
        problems.append(f"Dockerfile: EXPOSE {p} is no port a binary listens on in the deploy files")
    return problems


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")


def env_file_keys(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, sep, v = line.partition("=")
        out[k.strip()] = v
    return out


def _caddy_upstreams(text: str) -> list[tuple[str, str]]:
    """(site address, upstream) pairs of `reverse_proxy` directives, by top-level site block."""
    out, site, depth = [], None, 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.endswith("{"):
            site = line[:-1].strip() or None
        m = re.match(r"reverse_proxy\s+(?:(@\S+|/\S*)\s+)?(\S+)", line)
        if m and m.group(2) != "{":
            out.append((site, m.group(2)))
        depth += line.count("{") - line.count("}")
    return out


def _check_compose(deploy: Path, binaries: dict[str, Binary], sites: list[Site]) -> list[str]:
    problems = []
    text = (deploy / "compose.yaml").read_text()
    doc = yaml.safe_load(text)
    env_example = env_file_keys(deploy / ".env.example")
    refs = {}
    for m in _REF.finditer(text):
        refs.setdefault(m.group(1), set()).add(m.group(2) or "")
    for name, mods in sorted(refs.items()):
        needs_value = any(not x.startswith((":-", "-")) for x in mods)
        if needs_value and name not in env_example:
            problems.append(f"compose.yaml: ${{{name}}} has no default and is not in .env.example")
    for name in sorted(set(env_example) - set(refs)):
        problems.append(f".env.example: {name} is not used by compose.yaml")

    services = doc.get("services") or {}
    for s in sites:
        if s.subcommand is not None:
            continue
        drain = drain_seconds(s, binaries[s.binary])
        grace = seconds(s.extra["service"].get("stop_grace_period", "10s"))
        if grace is None or grace < drain:
            problems.append(f"compose.yaml: {s.where}: stop_grace_period {grace} s is shorter than its drain deadline {drain} s")

    # Caddy's upstreams are the bridge's listen address and livekit-server's port.
    lk = yaml.safe_load((deploy / "livekit.yaml").read_text())
    lk_port = lk.get("port", 7880)
    bridge_addrs = {s.env.get("BRIDGE_LISTEN") or binaries["bridge"].default("BRIDGE_LISTEN")
                    for s in sites if s.binary == "bridge" and s.subcommand is None}
    caddy = deploy / "Caddyfile"
    if caddy.exists():
        ups = _caddy_upstreams(caddy.read_text())
        bridge_ports = {port_of(a) for a in bridge_addrs}
        for site_addr, up in ups:
            if port_of(up) not in bridge_ports | {lk_port}:
                problems.append(f"Caddyfile: {site_addr}: reverse_proxy {up} is neither the bridge (BRIDGE_LISTEN {sorted(bridge_addrs)}) nor livekit-server (port {lk_port})")
        if not any(port_of(up) in bridge_ports for _, up in ups):
            problems.append("Caddyfile: no reverse_proxy reaches the bridge's BRIDGE_LISTEN")
    # Every LiveKit URL given to our binaries and to LiveKit SIP points at livekit.yaml's port.
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for var in ("LIVEKIT_URL", "LIVEKIT_WS_URL"):
            if var in env and url_port(str(env[var])) != lk_port:
                problems.append(f"compose.yaml: service {name}: {var} {env[var]} is not livekit.yaml's port {lk_port}")
    # Redis: livekit.yaml and sip.yaml use the one compose runs.
    redis_cmd = (services.get("redis") or {}).get("command") or []
    rport = 6379
    if "--port" in redis_cmd:
        rport = int(redis_cmd[redis_cmd.index("--port") + 1])
    for name, svc in services.items():
        url = (svc.get("environment") or {}).get("REDIS_URL")
        if url and port_of(re.sub(r"/\d*$", "", str(url))) != rport:
            problems.append(f"compose.yaml: service {name}: REDIS_URL {url} is not the compose redis port {rport}")
    for f in ("livekit.yaml", "sip.yaml"):
        p = deploy / f
        if p.exists():
            addr = ((yaml.safe_load(p.read_text()) or {}).get("redis") or {}).get("address")
            if port_of(addr) != rport:
                problems.append(f"{f}: redis address {addr} is not the compose redis port {rport}")
    return problems


def _check_k8s(deploy: Path, binaries: dict[str, Binary], sites: list[Site], metric_names) -> list[str]:
    problems = []
    docs = k8s_docs(deploy)
    workloads = [(f, d) for f, d in docs if pod_spec(d) is not None]
    services = [(f, d) for f, d in docs if d.get("kind") == "Service"]
    secrets = {d["metadata"]["name"]: set((d.get("stringData") or {}) | (d.get("data") or {}))
               for _, d in docs if d.get("kind") == "Secret"}
    used_secret_keys: dict[str, set[str]] = {}

    def container_ports(ps: dict) -> dict:
        out = {}
        for c in ps.get("containers") or []:
            for p in c.get("ports") or []:
                out[p["containerPort"]] = p.get("name")
        return out

    def resolve(port, ports: dict) -> bool:
        if isinstance(port, int):
            return port in ports
        return port in ports.values()

    for s in sites:
        c, ps, doc = s.extra["container"], s.extra["pod"], s.extra["doc"]
        b = binaries[s.binary]
        declared = {p["containerPort"]: p.get("name") for p in c.get("ports") or []}
        listening = listen_ports(s, b)
        for p in sorted(listening - set(declared)):
            problems.append(f"{s.file}: {s.where}: listens on {p} ({LISTEN_VARS[s.binary]}) but declares no such containerPort")
        for p in sorted(set(declared) - listening):
            problems.append(f"{s.file}: {s.where}: containerPort {p} is not where {s.binary} listens ({sorted(listening)})")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            hg = (c.get(probe) or {}).get("httpGet")
            if hg and not resolve(hg.get("port"), declared):
                problems.append(f"{s.file}: {s.where}: {probe} port {hg.get('port')} is not a declared container port")
        ann = ((doc["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if "prometheus.io/port" in ann and int(ann["prometheus.io/port"]) not in listening:
            problems.append(f"{s.file}: {s.where}: prometheus.io/port {ann['prometheus.io/port']} is not where {s.binary} listens")
        grace = ps.get("terminationGracePeriodSeconds", 30)
        need = drain_seconds(s, b) + prestop_seconds(c)
        if s.subcommand is None and grace < need:
            problems.append(f"{s.file}: {s.where}: terminationGracePeriodSeconds {grace} < drain deadline + preStop ({need:g} s)")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                used_secret_keys.setdefault(ref["name"], set()).add(ref["key"])
                if ref["name"] not in secrets:
                    problems.append(f"{s.file}: {s.where}: {e['name']} refers to Secret {ref['name']}, which no manifest defines")
                elif ref["key"] not in secrets[ref["name"]]:
                    problems.append(f"{s.file}: {s.where}: {e['name']} refers to key {ref['key']} missing from Secret {ref['name']}")
    for name, keys in secrets.items():
        for k in sorted(keys - used_secret_keys.get(name, set())):
            problems.append(f"k8s: Secret {name} has key {k} that no container uses")

    svc_by_name = {}
    for f, svc in services:
        sel = (svc.get("spec") or {}).get("selector") or {}
        targets = [(wf, w) for wf, w in workloads if selects(sel, pod_labels(w))]
        svc_by_name[svc["metadata"]["name"]] = (svc, targets)
        if not targets:
            problems.append(f"{f}: Service {svc['metadata']['name']} selects no workload")
        for p in svc["spec"].get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            for wf, w in targets:
                if not resolve(tp, container_ports(pod_spec(w))):
                    problems.append(f"{f}: Service {svc['metadata']['name']} targetPort {tp} is not a port of {w['kind']} {w['metadata']['name']}")

    names = {(d.get("kind"), d["metadata"]["name"]) for _, d in workloads}
    for f, d in docs:
        kind = d.get("kind")
        if kind == "Ingress":
            for rule in d["spec"].get("rules") or []:
                for path in (rule.get("http") or {}).get("paths") or []:
                    be = path["backend"]["service"]
                    svc = svc_by_name.get(be["name"])
                    if not svc:
                        problems.append(f"{f}: Ingress {d['metadata']['name']} backend Service {be['name']} is not defined")
                        continue
                    port = be["port"].get("name", be["port"].get("number"))
                    if not any(port in (p.get("name"), p.get("port")) for p in svc[0]["spec"]["ports"]):
                        problems.append(f"{f}: Ingress backend port {port} is not a port of Service {be['name']}")
        elif kind == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) not in names:
                problems.append(f"{f}: HPA {d['metadata']['name']} scales {ref['kind']} {ref['name']}, which no manifest defines")
            for m in d["spec"].get("metrics") or []:
                if m.get("type") == "Pods" and metric_names is not None:
                    mn = m["pods"]["metric"]["name"]
                    if mn not in metric_names:
                        problems.append(f"{f}: HPA {d['metadata']['name']} scales on {mn}, which no binary exports")
        elif kind == "PodDisruptionBudget":
            sel = d["spec"]["selector"].get("matchLabels") or {}
            if not any(selects(sel, pod_labels(w)) for _, w in workloads):
                problems.append(f"{f}: PodDisruptionBudget {d['metadata']['name']} selects no workload")
        elif kind == "ServiceMonitor":
            sel = d["spec"]["selector"].get("matchLabels") or {}
            selected = [svc for svc, _ in svc_by_name.values() if selects(sel, svc["metadata"].get("labels") or {})]
            for ep in d["spec"].get("endpoints") or []:
                if not any(ep.get("port") in [p.get("name") for p in svc["spec"]["ports"]] for svc in selected):
                    problems.append(f"{f}: ServiceMonitor {d['metadata']['name']} port {ep.get('port')} is on no selected Service")

    # LIVEKIT_URL in the cluster points at the Service the livekit-server chart values create.
    values = deploy / "helm" / "livekit-server.values.yaml"
    if values.exists():
        v = yaml.safe_load(values.read_text())
        svc_name = v.get("fullnameOverride")
        svc_port = (v.get("loadBalancer") or {}).get("servicePort", 80)
        for s in sites:
            url = s.env.get("LIVEKIT_URL")
            if url and url.startswith("ws://") and ".svc" in url:
                if not (url_host(url) or "").startswith(f"{svc_name}.") or url_port(url) != svc_port:
                    problems.append(f"{s.file}: {s.where}: LIVEKIT_URL {url} is not the chart's Service {svc_name}:{svc_port} (helm/livekit-server.values.yaml)")
    return problems


# ---------------------------------------------------------------- endpoints for the live test


def endpoints(deploy: Path) -> dict[str, set[str]]:
    """binary → HTTP paths the deploy files expect it to serve."""
    out: dict[str, set[str]] = {b: set() for b in BINARIES}
    sites, _ = k8s_sites(deploy)
    for s in sites:
        c, doc = s.extra["container"], s.extra["doc"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            hg = (c.get(probe) or {}).get("httpGet")
            if hg:
                out[s.binary].add(hg["path"])
        ann = ((doc["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if "prometheus.io/path" in ann:
            out[s.binary].add(ann["prometheus.io/path"])
    for f, d in k8s_docs(deploy):
        if d.get("kind") == "Ingress":
            for rule in d["spec"].get("rules") or []:
                for p in (rule.get("http") or {}).get("paths") or []:
                    out["bridge"].add(p["path"])  # the Ingress fronts only the bridge (checked above)
        if d.get("kind") == "ServiceMonitor":
            for ep in d["spec"].get("endpoints") or []:
                port = ep.get("port")
                out["bridge" if port == "http" else "agent"].add(ep.get("path", "/metrics"))
    caddy = deploy / "Caddyfile"
    if caddy.exists():
        for m in re.finditer(r"^\s*@\S+\s+path\s+(.+)$", caddy.read_text(), re.M):
            out["bridge"] |= set(m.group(1).split())
    return out


# ---------------------------------------------------------------- metrics


def defined_metrics(repo: Path) -> set[str]:
    """Metric names the bridge and agent register (string literals in their metrics.rs)."""
    names = set()
    for crate, prefix in (("bridge", "bridge_"), ("agent", "agent_")):
        text = (repo / crate / "src" / "metrics.rs").read_text()
        names |= set(re.findall(rf'"({prefix}[a-z0-9_]+)"', text))  # registered by name
        names |= set(re.findall(rf"# TYPE ({prefix}[a-z0-9_]+) ", text))  # written by hand
    return names


def dashboard_metrics(dashboard: dict) -> set[str]:
    names = set()
    def walk(panels):
        for p in panels:
            for t in p.get("targets") or []:
                expr = re.sub(r"\{[^}]*\}", "", t.get("expr", ""))
                for w in re.findall(r"\b([a-z_][a-z0-9_]*)\b", expr):
                    if w.startswith(("bridge_", "agent_")):
                        names.add(re.sub(r"_(bucket|sum|count)$", "", w))
            walk(p.get("panels") or [])
    walk(dashboard.get("panels") or [])
    return names


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets") or []:
                out.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels") or [])
    walk(dashboard.get("panels") or [])
    for v in (dashboard.get("templating") or {}).get("list") or []:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append((f"variable {v['name']}", q))
    return out


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())
