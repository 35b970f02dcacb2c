"""Getting a Consul agent onto a machine that has none: image, Debian package, or binary.

The ladder, tried in order (``mode="auto"``):

1. **Docker with the official image** (``hashicorp/consul``): used when it is present or
   can be pulled.
2. **Docker with a local image built ``FROM scratch``**: where no registry can be reached,
   Debian's ``consul`` package (bullseye carries 1.8.7) is downloaded with ``apt-get
   download`` through a *private* sources list built from the machine's own Debian mirror
   (read from the apt configuration at run time, never written into the repository), unpacked
   with ``dpkg -x``, and packed with the shared libraries ``ldd`` names into an image. The
   containers run with host networking, so all traffic stays on loopback.
3. **The binary directly**: where there is no Docker engine, the same binary runs as a
   daemonized ``consul agent -dev``, with its pid, log and state in the cache directory.

Everything downloaded lands in :func:`~lake_mesh_consul.testing._agent.cache_dir`, so a
second run needs no network. A Docker engine is started (``dockerd --storage-driver=vfs
--bridge=none --iptables=false``) only when asked (``start_docker=True``: the CLI's
``--start-docker`` or ``LAKE_MESH_START_DOCKER=1``), we are root, one is installed and none
runs; its pid and log go to the cache directory too, so that :func:`stop_docker_engine` can
stop exactly the engine we started. Without a running engine, ``auto`` runs the binary.

Nothing here imports requests or python-consul2: readiness is polled with urllib.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lake_mesh_consul.errors import ProvisioningError
from lake_mesh_consul.testing._agent import (
    cache_dir,
    find_consul_binary,
    free_port,
    retry_on_bind_conflict,
    wait_stopped,
)

__all__ = [
    "CONTAINER_NAME",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_OFFICIAL_IMAGE",
    "LOCAL_IMAGE",
    "AgentState",
    "ContainerAgent",
    "Progress",
    "agent_command",
    "agent_down",
    "agent_status",
    "agent_up",
    "build_local_image",
    "debian_mirror",
    "docker_available",
    "ensure_consul_binary",
    "ensure_image",
    "image_present",
    "start_docker_engine",
    "start_docker_requested",
    "stop_docker_engine",
    "wait_for_leader",
]

#: The official image tried first (``CONSUL_IMAGE`` / ``CONSUL_TEST_IMAGE`` override it).
DEFAULT_OFFICIAL_IMAGE = "hashicorp/consul:1.15"
#: The tag of the image built FROM scratch with Debian's consul binary and its libc.
LOCAL_IMAGE = "lake-mesh/consul:debian-bullseye"
#: The Debian suite whose ``consul`` package is downloaded (it carries consul 1.8.7).
DEBIAN_SUITE = "bullseye"
#: The name of the container ``lake-mesh agent up`` starts.
CONTAINER_NAME = "lake-mesh-consul"
#: The HTTP port ``lake-mesh agent up`` uses unless told otherwise (Consul's own default).
DEFAULT_HTTP_PORT = 8500
#: Seconds after a failed pull during which no pull is tried again (no network here).
PULL_RETRY_AFTER = 24 * 3600.0
#: The keyring apt verifies Debian's archive with.
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

#: Environment variable allowing ``agent up`` / ``agent provision`` to start a Docker engine.
START_DOCKER_ENV = "LAKE_MESH_START_DOCKER"

#: A callable that shows one line of progress (the CLI writes it to stderr).
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _run(
    args: Sequence[str],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; an absent program or timeout is a failure."""
    try:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(args), 127, "", f"{args[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(args), 124, "", f"timed out after {timeout:g}s")


# --- the consul binary -------------------------------------------------------------------


def debian_mirror(
    paths: Iterable[Path] | None = None,
) -> str:
    """The URI of the Debian archive this machine's apt is configured with.

    Reads deb822 ``*.sources`` files and one-line ``*.list`` files; security and update
    archives are skipped. The answer is only ever used in memory and in temporary files.

    Raises:
        ProvisioningError: when no Debian archive is configured.
    """
    if paths is None:
        etc = Path("/etc/apt")
        paths = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    uris: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" in fields.get("types", "").split():
                    uris.extend(fields.get("uris", "").split())
        elif path.name.endswith(".list"):
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line).split()
                if len(words) >= 2 and words[0] == "deb":
                    uris.append(words[1])
    for uri in uris:
        stripped = uri.rstrip("/")
        if stripped.startswith(("http://", "https://")) and stripped.endswith("/debian"):
            return stripped
    raise ProvisioningError(
        "no Debian archive is configured in /etc/apt (needed to download the consul package);"
        " install consul yourself and set LAKE_MESH_CONSUL_BIN"
    )


def ensure_consul_binary(progress: Progress = _quiet) -> Path:
    """A consul binary: one already found, else Debian's package downloaded and unpacked.

    The package is unpacked to ``<cache>/consul-<version>/``; later calls find it there
    without any network.

    Raises:
        ProvisioningError: when the package cannot be downloaded or unpacked.
    """
    found = find_consul_binary()
    if found is not None:
        return found
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise ProvisioningError(
                f"no consul binary and no {tool} to fetch Debian's package; install consul "
                "(or Docker) and try again, or set LAKE_MESH_CONSUL_BIN"
            )
    mirror = debian_mirror()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    progress(f"downloading Debian {DEBIAN_SUITE}'s consul package (private apt sources list)")
    with tempfile.TemporaryDirectory(prefix="lake-mesh-apt-") as tmp:
        work = Path(tmp)
        sources = work / "sources.list"
        signed = f"[signed-by={DEBIAN_KEYRING}] " if Path(DEBIAN_KEYRING).is_file() else ""
        sources.write_text(f"deb {signed}{mirror} {DEBIAN_SUITE} main\n", encoding="utf-8")
        for sub in ("lists/partial", "cache/archives/partial"):
            (work / sub).mkdir(parents=True)
        options = [
            "-o",
            f"Dir::Etc::sourcelist={sources}",
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            f"Dir::State::Lists={work / 'lists'}",
            "-o",
            f"Dir::Cache={work / 'cache'}",
            "-o",
            "Debug::NoLocking=1",  # our private lists need no lock on the system's
            *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []),
            "-q",
        ]
        update = _run(["apt-get", *options, "update"], timeout=300)
        if update.returncode != 0:
            raise ProvisioningError(
                f"apt-get update of the private {DEBIAN_SUITE} sources list failed: "
                f"{_redact(_last_line(update.stderr or update.stdout), mirror)}"
            )
        download = _run(["apt-get", *options, "download", "consul"], timeout=600, cwd=work)
        debs = sorted(work.glob("consul_*.deb"))
        if download.returncode != 0 or not debs:
            raise ProvisioningError(
                "apt-get download consul failed: "
                f"{_redact(_last_line(download.stderr or download.stdout), mirror)}"
            )
        deb = debs[-1]
        version = deb.name.split("_")[1].split("+")[0].split("-")[0].split(":")[-1]
        target = cache / f"consul-{version}"
        progress(f"unpacking {deb.name} into {target}")
        shutil.copy2(deb, cache / deb.name)
        unpack = _run(["dpkg", "-x", str(deb), str(target)], timeout=300)
        if unpack.returncode != 0:
            raise ProvisioningError(f"dpkg -x {deb.name} failed: {_last_line(unpack.stderr)}")
    binary = target / "usr" / "bin" / "consul"
    if not binary.is_file():
        raise ProvisioningError(f"the consul package held no usr/bin/consul (looked in {target})")
    return binary


def consul_version(binary: Path) -> str:
    """``1.8.7`` for a consul binary (``"unknown"`` when it does not say)."""
    out = _run([str(binary), "version"], timeout=30)
    match = re.search(r"Consul v?([0-9][^\s]*)", out.stdout)
    return match.group(1) if match else "unknown"


def _redact(text: str, mirror: str) -> str:
    """``text`` without the mirror's address (messages and logs must not name it)."""
    host = mirror.split("://", 1)[-1].split("/", 1)[0]
    return text.replace(mirror, "<debian mirror>").replace(host, "<debian mirror>")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


# --- Docker --------------------------------------------------------------------------------


def docker_available(timeout: float = 10.0) -> bool:
    """Whether a ``docker`` client can talk to a running engine."""
    if shutil.which("docker") is None:
        return False
    return (
        _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=timeout).returncode == 0
    )


def start_docker_requested(flag: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a Docker engine may be started: the flag when given, else the environment.

    ``LAKE_MESH_START_DOCKER`` set to ``1``, ``true``, ``yes`` or ``on`` allows it; anything
    else (or unset) does not: starting a root daemon is never a default.
    """
    if flag is not None:
        return flag
    value = (os.environ if environ is None else environ).get(START_DOCKER_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _dockerd_dir() -> Path:
    return cache_dir() / "dockerd"


def start_docker_engine(progress: Progress = _quiet, *, timeout: float = 60.0) -> bool:
    """Make sure a Docker engine runs; start ``dockerd`` ourselves where we can.

    Returns True when an engine answers. An engine is started only when ``dockerd`` is
    installed, we are root and nothing answers yet; it runs with the vfs storage driver, no
    bridge and no iptables (what works inside an unprivileged machine), its log and pid in
    ``<cache>/dockerd/``.
    """
    if docker_available():
        return True
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None or os.geteuid() != 0:
        return False
    state = _dockerd_dir()
    state.mkdir(parents=True, exist_ok=True)
    progress("starting the Docker engine (dockerd --storage-driver=vfs)")
    with (state / "dockerd.log").open("ab") as log:
        proc = subprocess.Popen(
            [dockerd, "--storage-driver=vfs", "--bridge=none", "--iptables=false"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (state / "dockerd.pid").write_text(str(proc.pid), encoding="utf-8")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            progress(f"dockerd exited with {proc.returncode}; see {state / 'dockerd.log'}")
            (state / "dockerd.pid").unlink(missing_ok=True)
            return False
        if docker_available(timeout=5):
            return True
        time.sleep(0.5)
    progress(f"dockerd did not answer within {timeout:g}s; see {state / 'dockerd.log'}")
    return False


def stop_docker_engine(progress: Progress = _quiet) -> bool:
    """Stop the engine :func:`start_docker_engine` started (never another one).

    Returns True when an engine we started was stopped.
    """
    pid_file = _dockerd_dir() / "dockerd.pid"
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    if not _pid_is(pid, "dockerd"):
        return False
    progress("stopping the Docker engine lake-mesh started")
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not _alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def image_present(image: str) -> bool:
    """Whether the engine has ``image`` locally."""
    return _run(["docker", "image", "inspect", image], timeout=30).returncode == 0


def _pull(image: str, progress: Progress, *, timeout: float = 300.0) -> bool:
    marker = cache_dir() / "pull-failed" / re.sub(r"[^A-Za-z0-9_.-]", "_", image)
    try:
        if time.time() - marker.stat().st_mtime < PULL_RETRY_AFTER:
            progress(f"not pulling {image}: a pull failed recently (delete {marker} to retry now)")
            return False
    except OSError:
        pass
    progress(f"pulling {image}")
    result = _run(["docker", "pull", image], timeout=timeout)
    if result.returncode == 0:
        marker.unlink(missing_ok=True)
        return True
    # Docker's message names the registry host; say what it means instead.
    progress(f"cannot pull {image} (exit {result.returncode}: no registry reachable?)")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False


#: The Dockerfile of the local image: the binary and the libraries ldd names, nothing else.
DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
LABEL org.lake-mesh.consul-version="{version}" org.lake-mesh.source="debian-{suite}"
ENTRYPOINT ["/bin/consul"]
CMD ["agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1"]
"""


def _shared_libraries(binary: Path) -> list[Path]:
    """The files ``ldd`` says ``binary`` loads (empty for a static binary)."""
    out = _run(["ldd", str(binary)], timeout=30)
    libs: list[Path] = []
    for line in out.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def build_local_image(binary: Path, tag: str = LOCAL_IMAGE, progress: Progress = _quiet) -> str:
    """Build ``tag`` FROM scratch holding ``binary`` as /bin/consul and its libc.

    Raises:
        ProvisioningError: when the build fails.
    """
    version = consul_version(binary)
    progress(f"building image {tag} FROM scratch with consul {version} and its libc")
    with tempfile.TemporaryDirectory(prefix="lake-mesh-image-") as tmp:
        context = Path(tmp)
        rootfs = context / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "tmp").mkdir(mode=0o1777)
        (rootfs / "consul" / "data").mkdir(parents=True)
        shutil.copy2(binary, rootfs / "bin" / "consul")
        for lib in _shared_libraries(binary):
            target = rootfs / lib.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), target)
        (context / "Dockerfile").write_text(
            DOCKERFILE.format(version=version, suite=DEBIAN_SUITE), encoding="utf-8"
        )
        # The classic builder is enough for COPY and talks to old engines as well as new.
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        result = _run(["docker", "build", "-q", "-t", tag, str(context)], timeout=600, env=env)
    if result.returncode != 0:
        raise ProvisioningError(f"docker build of {tag} failed: {_last_line(result.stderr)}")
    return tag


def ensure_image(
    progress: Progress = _quiet, *, image: str | None = None, allow_build: bool = True
) -> str:
    """An image that runs ``consul agent -dev``: official, pulled, or built locally.

    ``image`` (else ``$CONSUL_IMAGE``, else :data:`DEFAULT_OFFICIAL_IMAGE`) is used when
    present or pullable; otherwise :data:`LOCAL_IMAGE`, built once from Debian's package.
    Needs a running engine.

    Raises:
        ProvisioningError: when no image can be had.
    """
    wanted = image or os.environ.get("CONSUL_IMAGE") or DEFAULT_OFFICIAL_IMAGE
    if image_present(wanted) or (wanted != LOCAL_IMAGE and _pull(wanted, progress)):
        return wanted
    if image_present(LOCAL_IMAGE):
        progress(f"using the locally built image {LOCAL_IMAGE}")
        return LOCAL_IMAGE
    if not allow_build:
        raise ProvisioningError(f"neither {wanted} nor {LOCAL_IMAGE} is available")
    return build_local_image(ensure_consul_binary(progress), LOCAL_IMAGE, progress)


# --- the agent -----------------------------------------------------------------------------


def agent_command(
    *,
    host: str = "127.0.0.1",
    http_port: int = DEFAULT_HTTP_PORT,
    datacenter: str = "dc1",
    acl_master_token: str | None = None,
) -> list[str]:
    """Arguments after ``consul`` for a dev agent on ``host`` (host networking, no DNS/gRPC).

    The server and serf ports are picked free now, so several agents can share a host.
    The same arguments work for the binary, the official image and the local image.
    """
    args = [
        "agent",
        "-dev",
        "-client",
        host,
        "-bind",
        host,
        "-datacenter",
        datacenter,
        "-http-port",
        str(http_port),
        "-dns-port",
        "-1",
        "-grpc-port",
        "-1",
        "-serf-lan-port",
        str(free_port(host)),
        "-serf-wan-port",
        str(free_port(host)),
        "-server-port",
        str(free_port(host)),
        "-hcl",
        "disable_update_check = true",
    ]
    if acl_master_token:
        args += [
            "-hcl",
            'acl { enabled = true, default_policy = "deny", enable_token_persistence = false, '
            f'tokens {{ master = "{acl_master_token}", agent = "{acl_master_token}" }} }}',
        ]
    return args


def leader_of(address: str, timeout: float = 2.0) -> str | None:
    """The leader reported by the agent at ``host:port``; ``""`` if none; None if no answer."""
    try:
        url = f"http://{address}/v1/status/leader"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            value = json.loads(response.read() or b'""')
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return value if isinstance(value, str) else ""


def wait_for_leader(
    address: str,
    *,
    timeout: float = 60.0,
    progress: Progress = _quiet,
    alive: Callable[[], bool] | None = None,
    describe: Callable[[], str] | None = None,
) -> None:
    """Wait until the agent at ``address`` has a leader, reporting progress every few seconds.

    Raises:
        ProvisioningError: when the time runs out or ``alive()`` says the agent died (with
            ``describe()``, e.g. the agent's log tail).
    """
    started = time.monotonic()
    next_note = started + 2.0
    while True:
        if leader_of(address, timeout=1.0):
            return
        now = time.monotonic()
        if alive is not None and not alive():
            reason = "the agent exited"
            break
        if now - started > timeout:
            reason = f"no leader within {timeout:g}s"
            break
        if now >= next_note:
            progress(f"waiting for the agent at {address} to elect a leader ({now - started:.0f}s)")
            next_note = now + 3.0
        time.sleep(0.1)
    tail = describe() if describe else ""
    raise ProvisioningError(f"Consul agent at {address}: {reason}" + (f"\n{tail}" if tail else ""))


@dataclass
class AgentState:
    """What ``lake-mesh agent up`` started, saved as JSON in ``<cache>/agent/state.json``.

    Attributes:
        mode: ``"container"`` or ``"binary"`` (``"external"``: an agent we did not start).
        address: ``host:port`` of the HTTP API.
        image: the image (container mode).
        container: the container name (container mode).
        pid: the agent's process id (binary mode).
        binary: the consul binary (binary mode).
        log: the agent's log file (binary mode).
        datacenter: the agent's datacenter.
    """

    mode: str
    address: str
    image: str | None = None
    container: str | None = None
    pid: int | None = None
    binary: str | None = None
    log: str | None = None
    datacenter: str = "dc1"
    notes: list[str] = field(default_factory=list)

    @property
    def http_addr(self) -> str:
        """``http://host:port``: what to export as CONSUL_HTTP_ADDR."""
        return f"http://{self.address}"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (``notes`` left out)."""
        data = asdict(self)
        data.pop("notes")
        data["consul_http_addr"] = self.http_addr
        return data


def _state_file() -> Path:
    return cache_dir() / "agent" / "state.json"


def _load_state() -> AgentState | None:
    try:
        data = json.loads(_state_file().read_text(encoding="utf-8"))
        known = set(AgentState.__dataclass_fields__)
        return AgentState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def _save_state(state: AgentState) -> None:
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is gone for our purposes
            return False
    return True


def _pid_is(pid: int, name: str) -> bool:
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return True  # no /proc: trust the pid file
    return Path(cmdline).name == name


def _container_running(name: str) -> bool:
    result = _run(["docker", "inspect", "-f", "{{.State.Running}}", name], timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "true"


def _is_running(state: AgentState) -> bool:
    if state.mode == "binary" and state.pid is not None:
        return _pid_is(state.pid, "consul")
    if state.mode == "container" and state.container:
        return shutil.which("docker") is not None and _container_running(state.container)
    return False


def agent_status() -> dict[str, object]:
    """What runs: the saved state (if any), whether it runs, and the leader it reports.

    Keys: ``running`` (bool), ``mode``, ``address``, ``consul_http_addr``, ``leader`` and
    the rest of :class:`AgentState` when ``lake-mesh agent up`` started it.
    """
    state = _load_state()
    if state is None:
        return {"running": False, "mode": None, "address": None, "leader": None}
    info: dict[str, object] = dict(state.to_json())
    info["running"] = _is_running(state)
    info["leader"] = leader_of(state.address) if info["running"] else None
    return info


def _start_binary(host: str, port: int, progress: Progress) -> AgentState:
    binary = ensure_consul_binary(progress)
    directory = cache_dir() / "agent"
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "consul.log"
    progress(f"starting {binary} agent -dev on {host}:{port}")
    # posix_spawn in a new session: the agent outlives the CLI, and no Popen object is left
    # to complain that its child still runs.
    pid = os.posix_spawn(
        str(binary),
        [str(binary), *agent_command(host=host, http_port=port)],
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    state = AgentState(
        mode="binary",
        address=f"{host}:{port}",
        pid=pid,
        binary=str(binary),
        log=str(log_path),
    )
    _save_state(state)

    def tail() -> str:
        lines = log_path.read_text(errors="replace").splitlines()[-15:]
        return "\n".join(lines)

    try:
        wait_for_leader(state.address, progress=progress, alive=lambda: _alive(pid), describe=tail)
    except ProvisioningError:
        _stop_state(state)
        raise
    return state


def _start_container(host: str, port: int, image: str | None, progress: Progress) -> AgentState:
    resolved = ensure_image(progress, image=image)
    _run(["docker", "rm", "-f", CONTAINER_NAME], timeout=60)
    progress(f"starting container {CONTAINER_NAME} from {resolved} (host network) on {host}:{port}")
    result = _run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            CONTAINER_NAME,
            "--network",
            "host",
            "--label",
            "org.lake-mesh.agent=up",
            resolved,
            *agent_command(host=host, http_port=port),
        ],
        timeout=300,
    )
    if result.returncode != 0:
        raise ProvisioningError(f"docker run {resolved} failed: {_last_line(result.stderr)}")
    state = AgentState(
        mode="container", address=f"{host}:{port}", image=resolved, container=CONTAINER_NAME
    )
    _save_state(state)

    def logs() -> str:
        out = _run(["docker", "logs", "--tail", "15", CONTAINER_NAME], timeout=30)
        return (out.stdout + out.stderr).strip()

    try:
        wait_for_leader(
            state.address,
            progress=progress,
            alive=lambda: _container_running(CONTAINER_NAME),
            describe=logs,
        )
    except ProvisioningError:
        _stop_state(state)
        raise
    return state


def agent_up(
    *,
    mode: str = "auto",
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    image: str | None = None,
    start_docker: bool = False,
    progress: Progress = _quiet,
) -> AgentState:
    """Start a local dev agent (or find the one already running) and return its state.

    ``mode``: ``"auto"`` (container where a Docker engine runs, else the binary),
    ``"container"`` or ``"binary"``. A Docker engine is started only with
    ``start_docker=True``; without one, ``auto`` says so through ``progress`` and in the
    state's notes, and runs the binary. Idempotent: an agent we started that still
    runs is reused; an agent someone else runs on the address is reported as ``external``.

    Raises:
        ProvisioningError: when no agent can be started, saying why.
    """
    if mode not in ("auto", "container", "binary"):
        raise ProvisioningError(f"unknown mode {mode!r}; expected auto, container or binary")
    address = f"{host}:{port}"
    previous = _load_state()
    if previous is not None and previous.address == address and _is_running(previous):
        if mode in ("auto", previous.mode):
            wait_for_leader(address, progress=progress, timeout=30)
            previous.notes.append("already running")
            return previous
        _stop_state(previous)
    elif previous is not None and _is_running(previous):
        raise ProvisioningError(
            f"an agent started by lake-mesh already runs at {previous.address}; "
            "run `lake-mesh agent down` first"
        )
    if leader_of(address) is not None:
        return AgentState(mode="external", address=address, notes=["not started by lake-mesh"])
    with contextlib.suppress(OSError):
        _state_file().unlink()
    if mode in ("auto", "container"):
        engine = start_docker_engine(progress) if start_docker else docker_available()
        if engine:
            try:
                return retry_on_bind_conflict(
                    lambda: _start_container(host, port, image, progress),
                    failure_text=str,
                    http_port=port,
                )
            except ProvisioningError as exc:
                if mode == "container":
                    raise
                progress(f"container path failed ({exc}); running the binary instead")
        elif mode == "container":
            raise ProvisioningError(
                "no Docker engine is running and none could be started"
                if start_docker
                else "no Docker engine is running (start one, or pass --start-docker)"
            )
        else:
            why = "none could be started" if start_docker else _NO_ENGINE_HINT
            progress(f"no Docker engine is running ({why}): running the consul binary directly")
            state = _start_binary_retrying(host, port, progress)
            state.notes.append("binary: no Docker engine running")
            return state
    return _start_binary_retrying(host, port, progress)


def _start_binary_retrying(host: str, port: int, progress: Progress) -> AgentState:
    return retry_on_bind_conflict(
        lambda: _start_binary(host, port, progress), failure_text=str, http_port=port
    )


#: What ``agent up`` says when it runs the binary because no engine runs.
_NO_ENGINE_HINT = "lake-mesh starts one only with --start-docker or LAKE_MESH_START_DOCKER=1"


def _stop_state(state: AgentState) -> None:
    if state.mode == "binary" and state.pid is not None and _pid_is(state.pid, "consul"):
        os.kill(state.pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(state.pid):
                break
            time.sleep(0.1)
        else:
            os.kill(state.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)  # reap it when we are its parent
    elif state.mode == "container" and state.container and shutil.which("docker"):
        _run(["docker", "rm", "-f", state.container], timeout=60)
    with contextlib.suppress(OSError):
        _state_file().unlink()


def agent_down(progress: Progress = _quiet) -> AgentState | None:
    """Stop the agent ``agent up`` started; return its state (None when nothing was up)."""
    state = _load_state()
    if state is None:
        return None
    progress(f"stopping the {state.mode} agent at {state.address}")
    _stop_state(state)
    return state


# --- a container agent for tests (testcontainers) ---------------------------------------------


_RYUK_CHECKED: list[bool] = []  # one check per process


def _disable_ryuk_without_image() -> None:
    """Testcontainers' reaper is an image too: where it is absent, run without it.

    Our fixtures remove their containers themselves; the reaper is only a safety net.
    """
    if _RYUK_CHECKED or "TESTCONTAINERS_RYUK_DISABLED" in os.environ:
        return
    _RYUK_CHECKED.append(True)
    ryuk = os.environ.get("RYUK_CONTAINER_IMAGE", "testcontainers/ryuk:0.8.1")
    if not image_present(ryuk):
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"


@dataclass
class ContainerAgent:
    """A dev agent in a container started through testcontainers, with host networking.

    The same controls as :class:`~lake_mesh_consul.testing._agent.DevAgent`: start, stop,
    restart, pause (SIGSTOP to the agent), resume, close. ``-dev`` keeps everything in memory,
    so every start forgets registrations and keys, wiped or not.

    Args:
        image: an image whose entrypoint accepts ``agent -dev ...`` (official or local).
        host: loopback address to bind.
        acl_master_token: when set, ACLs are on with default deny and this management token.
    """

    image: str
    host: str = "127.0.0.1"
    acl_master_token: str | None = None
    http_port: int = 0
    datacenter: str = "dc1"
    _container: Any = None  # testcontainers' DockerContainer (untyped)

    @property
    def address(self) -> str:
        """``host:port`` of the HTTP API."""
        return f"{self.host}:{self.http_port}"

    @property
    def http_addr(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        """Always None: the process lives in the container."""
        return None

    def _wrapped(self) -> Any:
        if self._container is None:
            return None
        return self._container.get_wrapped_container()

    def _running(self) -> bool:
        wrapped = self._wrapped()
        if wrapped is None:
            return False
        try:
            wrapped.reload()
            return bool(wrapped.status in ("running", "paused"))
        except Exception:
            return False

    def start(self, *, wipe: bool = True, timeout: float = 60.0) -> None:
        """Start the container (a new one, or the stopped one again) and wait for a leader.

        Serf and server ports are chosen when a container is made; when another process
        takes one before the agent binds it ("address already in use"), a new container with
        new ports is started instead (twice at most; ``-dev`` keeps nothing across starts).

        Raises:
            ProvisioningError: the container did not start or elect a leader in time.
        """
        attempts = 0

        def start_once() -> None:
            nonlocal attempts
            attempts += 1
            self._start_once(wipe=wipe or attempts > 1, timeout=timeout)

        if self.http_port == 0:
            self.http_port = free_port(self.host)
        retry_on_bind_conflict(start_once, failure_text=str, http_port=self.http_port)

    def _start_once(self, *, wipe: bool, timeout: float) -> None:
        if self.http_port == 0:
            self.http_port = free_port(self.host)
        wrapped = self._wrapped()
        try:
            if wrapped is not None and not wipe:
                wrapped.start()
            else:
                self._remove()
                _disable_ryuk_without_image()
                from testcontainers.core.container import DockerContainer

                command = agent_command(
                    host=self.host,
                    http_port=self.http_port,
                    datacenter=self.datacenter,
                    acl_master_token=self.acl_master_token,
                )
                container = (
                    DockerContainer(self.image)
                    .with_command(command)
                    .with_kwargs(network_mode="host", labels={"org.lake-mesh.agent": "test"})
                )
                self._container = container
                container.start()
        except ProvisioningError:
            raise
        except Exception as exc:  # docker-py and testcontainers raise their own types
            raise ProvisioningError(
                f"cannot start a Consul container from {self.image}: {type(exc).__name__}: {exc}"
            ) from exc
        wait_for_leader(self.address, timeout=timeout, alive=self._running, describe=self.log)

    def log(self, tail: int = 40) -> str:
        """The last lines of the agent's output."""
        wrapped = self._wrapped()
        if wrapped is None:
            return ""
        try:
            data = wrapped.logs(tail=tail)
        except Exception:
            return ""
        return bytes(data).decode(errors="replace")

    def _signal(self, name: str) -> None:
        wrapped = self._wrapped()
        if wrapped is not None:
            with contextlib.suppress(Exception):
                wrapped.kill(signal=name)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the container (resuming it first if paused); it can be started again."""
        wrapped = self._wrapped()
        if wrapped is None or not self._running():
            return
        self._signal("SIGCONT")
        with contextlib.suppress(Exception):
            if kill:
                wrapped.kill()
            else:
                wrapped.stop(timeout=10)

    def restart(self, *, wipe: bool = True) -> None:
        """Stop and start again on the same HTTP port (a new container when ``wipe``)."""
        self.stop()
        self.start(wipe=wipe)

    def pause(self) -> None:
        """SIGSTOP the agent: it stops answering but keeps its sockets open."""
        self._signal("SIGSTOP")
        wrapped = self._wrapped()
        with contextlib.suppress(Exception):
            wrapped.reload()
            wait_stopped(int(wrapped.attrs["State"]["Pid"]))

    def resume(self) -> None:
        """SIGCONT a paused agent."""
        self._signal("SIGCONT")

    def _remove(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            self._signal_container(container, "SIGCONT")
            with contextlib.suppress(Exception):
                container.stop()

    @staticmethod
    def _signal_container(container: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            container.get_wrapped_container().kill(signal=name)

    def close(self) -> None:
        """Remove the container."""
        self._remove()

    def __enter__(self) -> ContainerAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
