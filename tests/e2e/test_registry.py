"""The image for real, as CI makes and ships it: built from the project's Dockerfile with buildah,
pushed by scripts/push-image.sh (what .woodpecker/image.yaml runs) to a registry that wants a
password over TLS, removed here, pulled back with podman and run: `sysmon --version`, then the
image's aggregator and a collector (host network) storing real samples in PostgreSQL.

No Docker engine and no public registry here: the registry is Debian's docker-registry (CNCF
distribution) on a loopback port with htpasswd auth and a throwaway CA, and the Dockerfile's bases
(BASE_IMAGE, NODE_IMAGE) are made locally with debootstrap (Debian bookworm minbase: python3 3.11,
and nodejs + npm for the dashboard's stage), committed with buildah. The container storage, and so
the bases and buildah's layer cache, lives under a stable cache directory ($SYSMON_TEST_CACHE, else
~/.cache/sysmon-test): only the first run builds everything.

What this machine needs (found by trying, kept here): hybrid cgroups, so runc (crun refuses) with
the cgroupfs manager; default ulimits no higher than what podman may set (the hard limits, and for
processes also kernel.pid_max, to which podman lowers it); a REGISTRY_AUTH_FILE that exists; and
every configuration file of the tools pointed into the test's own directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import secrets
import shutil
import ssl
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sysmon.core.embedded import EmbeddedRedis, free_port
from tests.helpers import wait_for
from tests.integration.test_tls import CA

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
TOOLS = ("buildah", "podman", "skopeo", "runc", "docker-registry", "debootstrap", "htpasswd")
CACHE = Path(os.environ.get("SYSMON_TEST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "sysmon-test")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
NODE_PACKAGES = ("nodejs", "npm")
# This machine's own CAs (a proxy's, say): the bases trust them, as an image built here must to
# fetch its npm and PyPI packages. Debian's ca-certificates has the public ones.
LOCAL_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The bases' names carry what they were made from: a change makes new ones.
_KEY = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES, "|", *NODE_PACKAGES)).encode()
                      + b"".join(p.read_bytes() for p in LOCAL_CAS)).hexdigest()[:12]
BASE_IMAGE = f"localhost/sysmon-test/base:{SUITE}-{_KEY}"
NODE_IMAGE = f"localhost/sysmon-test/node:{SUITE}-{_KEY}"
USER, PASSWORD = "ci", secrets.token_hex(12)
TOKEN = "registry-test-token-0123456789abcdef"

# The first run makes the bases and builds every layer (about 10 min); later runs reuse the cache.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@dataclass
class Engine:
    """buildah, podman and skopeo with configuration, storage and credentials of the test's own."""

    env: dict[str, str]
    dir: Path

    def run(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", self.env)
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n"
                                 f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def exists(self, image: str) -> bool:
        return self.run("podman", "image", "exists", image, check=False).returncode == 0


def _ulimits() -> list[str]:
    """Podman sets these in every container; asking for more than the hard limits fails (EPERM),
    and podman itself lowers the process limit to kernel.pid_max."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    nofile = 1 << 20 if nofile == resource.RLIM_INFINITY else nofile
    return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (`make test` installs Debian's buildah podman skopeo runc "
                    "docker-registry debootstrap apache2-utils where apt-get may run)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and the container tools run as root here (rootful podman with runc)")
    # Inside an unprivileged container (a CI runner's step, say) no container can start: say so.
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"containers cannot start here (unshare: {probe.stderr.strip()}); run privileged to test this")
    d = tmp_path_factory.mktemp("containers")
    (d / "run").mkdir()
    conf = {
        "containers.conf": "\n".join([
            "[containers]",
            'netns = "host"',
            "default_ulimits = [" + ", ".join(f'"{u}"' for u in _ulimits()) + "]",
            "[engine]",
            'runtime = "runc"',
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f'events_logfile_path = "{d / "events.log"}"',
        ]),
        "storage.conf": f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE / "storage"}"\nrunroot = "{d / "run"}"\n',
        "registries.conf": "unqualified-search-registries = []\n",
        "auth.json": '{"auths": {}}\n',
        "policy.json": '{"default": [{"type": "insecureAcceptAnything"}]}\n',
    }
    for name, text in conf.items():
        (d / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSMON_")} | {
        "CONTAINERS_CONF": str(d / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf"),
        "REGISTRY_AUTH_FILE": str(d / "auth.json"),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    return Engine(env, d)


def _make_bases(engine: Engine) -> None:
    """debootstrap once; the rootfs committed with `buildah from scratch`, nodejs + npm on top."""
    if not engine.exists(BASE_IMAGE):
        rootfs = engine.dir / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                        str(rootfs), "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        ctr = engine.run("buildah", "from", "scratch").stdout.strip()
        mnt = engine.run("buildah", "mount", ctr).stdout.strip()
        subprocess.run(["cp", "-a", f"{rootfs}/.", mnt], check=True, timeout=300)
        for ca in LOCAL_CAS:
            shutil.copy(ca, Path(mnt) / "usr/local/share/ca-certificates" / ca.name)
        engine.run("buildah", "umount", ctr)
        engine.run("buildah", "run", ctr, "--", "update-ca-certificates", "--fresh")
        # pip (23, Debian's) and npm read their own bundles unless told to use the system's.
        engine.run("buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "--env", f"PIP_CERT={CA_BUNDLE}", "--env", f"NODE_EXTRA_CA_CERTS={CA_BUNDLE}",
                   "--cmd", "/bin/bash", ctr)
        engine.run("buildah", "commit", "--rm", "-q", ctr, BASE_IMAGE)
        shutil.rmtree(rootfs, ignore_errors=True)
    if not engine.exists(NODE_IMAGE):
        ctr = engine.run("buildah", "from", BASE_IMAGE).stdout.strip()
        engine.run("buildah", "run", "--network", "host", ctr, "--", "sh", "-c",
                   "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                   f"--no-install-recommends {' '.join(NODE_PACKAGES)} >/dev/null && rm -rf /var/lib/apt/lists/*",
                   timeout=900)
        engine.run("buildah", "commit", "--rm", "-q", ctr, NODE_IMAGE)


@dataclass
class Registry:
    address: str
    certs: Path  # ca.crt, as --cert-dir wants it


@pytest.fixture(scope="module")
def registry(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    d = tmp_path_factory.mktemp("registry")
    ca = CA(d, "registry-test-ca")
    server = ca.issue("registry", server=True)
    certs = d / "certs"
    certs.mkdir()
    shutil.copy(ca.path, certs / "ca.crt")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True)
    (d / "htpasswd").write_text(htpasswd.stdout)
    context = ssl.create_default_context(cafile=str(ca.path))
    log = (d / "registry.log").open("wb")
    failures = []
    for _ in range(3):  # a free port can be taken again before the registry binds it: then another
        address = f"127.0.0.1:{free_port()}"
        (d / "config.yml").write_text(json.dumps({  # JSON is YAML
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(d / "data")}, "delete": {"enabled": True}},
            "http": {"addr": address, "secret": secrets.token_hex(16),
                     "tls": {"certificate": str(server.cert), "key": str(server.key)}},
            "auth": {"htpasswd": {"realm": "sysmon-test", "path": str(d / "htpasswd")}},
        }))
        proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT)
        if _answers_401(address, context, proc, within=30):
            break
        proc.kill()
        failures.append(f"{address}: exit {proc.wait()}")
    else:
        raise AssertionError(f"docker-registry did not come up ({failures}):\n{(d / 'registry.log').read_text()}")
    yield Registry(address, certs)
    proc.terminate()
    proc.wait(10)
    log.close()


def _answers_401(address: str, context: ssl.SSLContext, proc: subprocess.Popen, within: float) -> bool:
    """Up, over TLS, and wanting the password."""
    deadline = time.monotonic() + within
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"https://{address}/v2/", context=context, timeout=2)
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def pushed(engine: Engine, registry: Registry) -> str:
    """The image, built and pushed the way .woodpecker/image.yaml does it, then gone from here."""
    _make_bases(engine)
    repository, tags = "acme/sysmon", f"{VERSION} main"
    started = time.monotonic()
    push = engine.run("sh", "scripts/push-image.sh", cwd=ROOT, timeout=1800, env=engine.env | {
        "REGISTRY": registry.address, "REPOSITORY": repository, "TAGS": tags,
        "REGISTRY_USERNAME": USER, "REGISTRY_PASSWORD": PASSWORD, "CERT_DIR": str(registry.certs),
        "BUILD_ARGS": f"BASE_IMAGE={BASE_IMAGE} NODE_IMAGE={NODE_IMAGE}",
    })
    print(f"\nbuilt and pushed in {time.monotonic() - started:.1f} s")
    image = f"{registry.address}/{repository}"
    for tag in tags.split():
        assert f"pushed {image}:{tag}" in push.stdout
    assert PASSWORD not in push.stdout + push.stderr
    # Nothing of it left here: what runs below is what the registry hands out.
    engine.run("buildah", "manifest", "rm", f"{image}:{VERSION}", check=False)
    for tag in tags.split():
        engine.run("podman", "rmi", "--force", f"{image}:{tag}", check=False)
    assert not engine.exists(f"{image}:{VERSION}")
    return f"{image}:{VERSION}"


def test_the_registry_wants_the_password(engine: Engine, registry: Registry, pushed: str) -> None:
    anonymous = engine.run("skopeo", "inspect", "--no-creds", f"--cert-dir={registry.certs}", f"docker://{pushed}",
                           check=False)
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower() or "authentication required" in anonymous.stderr.lower()


@pytest.fixture(scope="module")
def pulled(engine: Engine, registry: Registry, pushed: str) -> Iterator[str]:
    engine.run("podman", "pull", "--quiet", f"--cert-dir={registry.certs}", pushed, timeout=600)
    # Resolved through the registry: its digest there is the image's.
    digests = engine.run("podman", "image", "inspect", "--format", "{{json .RepoDigests}}", pushed).stdout
    assert any(d.startswith(f"{pushed.rsplit(':', 1)[0]}@sha256:") for d in json.loads(digests)), digests
    size, base = (int(engine.run("podman", "image", "inspect", "--format", "{{.Size}}", i).stdout) / 2**20
                  for i in (pushed, BASE_IMAGE))
    print(f"\nimage {pushed}: {size:.0f} MiB, on a debootstrap minbase {SUITE} base of {base:.0f} MiB")
    yield pushed
    # The name only (the registry's port is new every run); the layers stay cached.
    engine.run("podman", "rmi", "--force", pushed, check=False)


def test_the_pulled_image_reports_its_version_as_a_non_root_user(engine: Engine, pulled: str) -> None:
    out = engine.run("podman", "run", "--rm", pulled, "--version")
    assert out.stdout.strip() == f"sysmon {VERSION}"
    user = engine.run("podman", "run", "--rm", "--entrypoint", "id", pulled, "-u")
    assert user.stdout.strip() == "10001"


@pytest.fixture
def redis_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this test's own on a loopback port (the session's listens on a private socket)."""
    rs = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    rs.start()
    yield f"redis://127.0.0.1:{rs.port}/0"
    rs.stop()


async def test_the_pulled_images_aggregator_and_collector_store_real_samples(
        engine: Engine, pulled: str, pg_dsn: str, redis_tcp: str) -> None:
    # The test database's socket, mounted alone into the container: its directory (PostgreSQL's data
    # directory) is closed to the image's user.
    host_socket_dir = pg_dsn.split("host=")[1]
    in_container = "/tmp/pg"
    dsn = pg_dsn.replace(f"host={host_socket_dir}", f"host={in_container}")
    grpc_address = f"127.0.0.1:{free_port()}"
    names = [f"sysmon-test-{n}-{secrets.token_hex(3)}" for n in ("aggregator", "collector")]
    common = ["podman", "run", "--detach", "--network", "host", "--env", f"SYSMON_TOKEN={TOKEN}"]
    try:
        engine.run(*common, "--name", names[0], "--env", f"SYSMON_POSTGRES_URL={dsn}",
                   "--volume", f"{host_socket_dir}/.s.PGSQL.5432:{in_container}/.s.PGSQL.5432",
                   "--env", f"SYSMON_REDIS_URL={redis_tcp}", "--env", f"SYSMON_LISTEN={grpc_address}",
                   "--env", f"SYSMON_METRICS_LISTEN=127.0.0.1:{free_port()}", pulled, "aggregator")

        async def serving() -> bool:
            async with grpc.aio.insecure_channel(grpc_address) as ch:
                try:
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return r.status == health_pb2.HealthCheckResponse.SERVING

        await wait_for(serving, within=90, interval=0.5, message="the image's aggregator to serve")
        engine.run(*common, "--name", names[1], "--env", f"SYSMON_AGGREGATOR={grpc_address}",
                   "--env", "SYSMON_HOST_ID=from-the-registry", "--env", "SYSMON_INTERVAL=500ms", pulled, "agent")
        db = await asyncpg.connect(pg_dsn)
        try:
            async def stored() -> int:
                return await db.fetchval(
                    "SELECT count(*) FROM samples_raw r JOIN series s USING (series_id) WHERE s.host_id = $1",
                    "from-the-registry")

            first = await wait_for(stored, within=60, interval=0.5, message="the collector's samples in PostgreSQL")
            await wait_for(lambda: _more(stored, first), within=30, interval=0.5, message="more samples")
            cpu = await db.fetchval("SELECT count(*) FROM series WHERE host_id = $1 AND name = $2",
                                    "from-the-registry", "system.cpu.utilization")
            assert cpu > 0
        finally:
            await db.close()
    finally:
        for name in reversed(names):
            logs = engine.run("podman", "logs", name, check=False)
            engine.run("podman", "rm", "--force", "--time", "10", name, check=False)
            if logs.returncode == 0 and "Traceback" in logs.stdout + logs.stderr:
                print(f"--- {name}\n{(logs.stdout + logs.stderr)[-3000:]}")


async def _more(stored, than: int) -> bool:
    return await stored() > than


def test_the_image_runs_under_the_tests_own_configuration_only(engine: Engine) -> None:
    """The tools read the files of the test, not the machine's: storage under the cache, runc."""
    info = json.loads(engine.run("podman", "info", "--format", "json").stdout)
    assert info["store"]["graphRoot"] == str(CACHE / "storage")
    assert info["host"]["ociRuntime"]["name"] == "runc"
    assert info["host"]["cgroupManager"] == "cgroupfs"

