"""The runtime image installs what the binaries load at run time: the Debian package of every
shared library they link (readelf NEEDED → dpkg -S), and the agent's offline model data."""

import fnmatch
import os
import re
import shutil
import subprocess

import pytest

import drift

# In debian:*-slim already (Essential / required by the base system).
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1"}


def owner_package(path: str) -> str:
    """The package that installed `path` (dpkg knows /usr/lib, not the /lib symlink of usrmerge)."""
    candidates = [path, os.path.realpath(path)]
    if path.startswith("/lib"):
        candidates.insert(1, "/usr" + path)
    for p in candidates:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].strip()
    raise AssertionError(f"no Debian package owns {path}")


def needed_libs(exe) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(exe)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def resolve(lib: str) -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^\s+{re.escape(lib)} \(libc6,x86-64[^)]*\) => (\S+)$", out, re.M) or \
        re.search(rf"^\s+{re.escape(lib)} \([^)]*\) => (\S+)$", out, re.M)
    assert m, f"{lib} is not installed on this machine"
    return m.group(1)


@pytest.fixture(scope="module")
def runtime_packages(deploy_dir):
    if not (shutil.which("dpkg") and shutil.which("readelf")):
        pytest.fail("needs dpkg and readelf (Debian binutils)")
    return drift.dockerfile_runtime_packages(deploy_dir)


def missing_packages(exe, packages: set[str]) -> dict[str, str]:
    """Linked library → its Debian package, for those `packages` (+ the base image) lack."""
    missing = {}
    for lib in needed_libs(exe):
        pkg = owner_package(resolve(lib))
        if pkg not in packages | BASE_IMAGE_PACKAGES:
            missing[lib] = pkg
    return missing


@pytest.mark.parametrize("binary", drift.BINARIES)
def test_runtime_image_has_every_linked_library(binary, bin_dir, runtime_packages):
    missing = missing_packages(bin_dir / binary, runtime_packages)
    assert not missing, f"deploy/Dockerfile's runtime stage lacks the packages of {missing}"


def test_a_missing_library_package_is_caught(bin_dir, runtime_packages):
    assert missing_packages(bin_dir / "agent", runtime_packages - {"libsphinxbase3"}) == {
        "libsphinxbase.so.3": "libsphinxbase3"
    }


def test_runtime_image_has_the_offline_models(repo, runtime_packages):
    src = (repo / "agent" / "src" / "providers" / "offline_stt.rs").read_text()
    model_dir = re.search(r'DEFAULT_MODEL_DIR: &str = "([^"]+)"', src).group(1)
    assert owner_package(model_dir) in runtime_packages
    assert "espeak-ng-data" in runtime_packages
    assert "ca-certificates" in runtime_packages


def test_dockerfile_builds_and_installs_every_binary(deploy_dir):
    text = (deploy_dir / "Dockerfile").read_text()
    build = re.search(r"cargo build --release --locked ([^\n\\]*)", text).group(1)
    assert set(re.findall(r"-p (\w+)", build)) == set(drift.BINARIES), build
    installed = re.search(r"install -D -m 0755 -t /out (.*)", text).group(1).split()
    assert sorted(installed) == sorted(f"target/release/{b}" for b in drift.BINARIES)
    cmd = re.search(r'^CMD \["(\w+)"\]', text, re.M).group(1)
    assert cmd in drift.BINARIES


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (patterns without `!`)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        pat = pat.strip("/")
        for pre in prefixes:
            if fnmatch.fnmatch(pre, pat) or (pat.startswith("**/") and fnmatch.fnmatch(pre, pat[3:])):
                return True
    return False


def test_dockerignore_keeps_the_workspace_sources(repo):
    lines = (repo / ".dockerignore").read_text().splitlines()
    patterns = [l.strip() for l in lines if l.strip() and not l.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "negations are not modelled here"
    cargo = (repo / "Cargo.toml").read_text()
    members = re.findall(r'"([a-z]+)"', re.search(r"members = \[([^\]]*)\]", cargo).group(1))
    tracked = subprocess.run(["git", "ls-files", "Cargo.toml", "Cargo.lock", *members], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 50
    left_out = [f for f in tracked if dockerignored(f, patterns)]
    assert not left_out, f".dockerignore leaves build inputs out of the image build: {left_out[:10]}"
    # and it does leave out what must never be sent to a builder
    for f in ("target/debug/bridge", ".git/config", "deploy/.env", "demo-out/calls.db"):
        assert dockerignored(f, patterns), f
