# Shared by scripts/test and scripts/main (sourced): everything a fresh machine needs.
#
#   * Debian packages, when missing and we are root: python3-venv, docker.io (+ compose);
#   * the virtual environment .venv with `pip install -e '.[test]'` (redone when
#     pyproject.toml changes);
#   * Consul: `lake-mesh agent provision --start-docker` fetches Debian's consul package into
#     the cache and, where a Docker engine runs or can be started, makes a Consul image
#     available (official, or built FROM scratch). Nothing is fetched twice. These scripts are
#     the one place that asks for a Docker engine: the CLI and the pytest plugin start none
#     unless told to.
#
# After sourcing: $PY is the venv's python, $LAKE_MESH the CLI, STARTED_DOCKERD=1 when this
# run started the Docker engine (call stop_started_dockerd to stop it again).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
# testcontainers' reaper image cannot be pulled where no registry is reachable; our fixtures
# remove their containers themselves.
export TESTCONTAINERS_RYUK_DISABLED=${TESTCONTAINERS_RYUK_DISABLED:-true}

step() { printf '\n==> %s\n' "$*" >&2; }

_need_packages() {
    local missing=()
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        step "missing ${missing[*]} (not root or no apt-get): continuing without them"
        return 0
    fi
    step "installing Debian packages: ${missing[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || step "could not install ${missing[*]}: continuing without them"
}

_venv() {
    if [ ! -x .venv/bin/python ]; then
        step "creating .venv"
        python3 -m venv .venv
    fi
    PY="$ROOT/.venv/bin/python"
    LAKE_MESH="$ROOT/.venv/bin/lake-mesh"
    local stamp
    stamp=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
    if [ ! -x "$LAKE_MESH" ] || [ "$(cat .venv/.lake-mesh-installed 2>/dev/null)" != "$stamp" ]; then
        step "pip install -e '.[test]'"
        "$PY" -m pip install -q --upgrade pip >/dev/null
        "$PY" -m pip install -q -e '.[test]'
        echo "$stamp" > .venv/.lake-mesh-installed
    fi
}

STARTED_DOCKERD=0
_consul() {
    local had_engine=0
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        had_engine=1
    fi
    step "provisioning Consul (binary; image where Docker runs)"
    "$LAKE_MESH" agent provision --start-docker
    if [ "$had_engine" -eq 0 ] && docker info >/dev/null 2>&1; then
        STARTED_DOCKERD=1
    fi
}

stop_started_dockerd() {
    if [ "${STARTED_DOCKERD:-0}" -eq 1 ]; then
        step "stopping the Docker engine this run started"
        "$PY" -c 'from lake_mesh_consul.testing._provision import stop_docker_engine as s; s()'
        STARTED_DOCKERD=0
    fi
}

_need_packages
_venv
_consul
