#!/bin/sh
# Bring a fresh Debian 12 machine (as root) to the point where `make demo` and `make test` run:
# apt packages, then .venv with `pip install -e .[dev]`. Idempotent: when everything is there it
# only checks, in about a second.
set -eu

cd "$(dirname "$0")/.."

# Debian packages afield uses at build, test and run time. Keep in sync with README.md.
APT_PACKAGES="
mmdebstrap
ostree
gir1.2-ostree-1.0
libgirepository1.0-dev
libcairo2-dev
pkg-config
python3-venv
bubblewrap
busybox-static
grub-common
grub-emu
e2fsprogs
debian-archive-keyring
ca-certificates
xdelta3
zstd
postgresql
podman
skopeo
buildah
docker-registry
catatonit
containernetworking-plugins
runc
chromium
fonts-dejavu-core
fdisk
dosfstools
mtools
grub-pc-bin
grub-efi-amd64-bin
ovmf
qemu-efi-aarch64
qemu-system-x86
qemu-system-arm
qemu-user-static
arch-test
"

missing=""
for pkg in $APT_PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $pkg"
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing Debian packages:$missing; run as root or install them" >&2
        exit 1
    fi
    echo "bootstrap: installing$missing"
    # A third-party source that cannot be reached must not stop the Debian ones from updating.
    apt-get update -q || echo "bootstrap: apt-get update reported errors; continuing" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# Podman on this kind of host: crun fails on its cgroups, and runc cannot raise RLIMIT_NPROC,
# so containers get runc, cgroupfs and fixed ulimits. An existing file is never overwritten.
CONTAINERS_CONF=/etc/containers/containers.conf
if [ ! -e "$CONTAINERS_CONF" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "bootstrap: writing $CONTAINERS_CONF"
        mkdir -p "$(dirname "$CONTAINERS_CONF")"
        cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
    else
        echo "bootstrap: $CONTAINERS_CONF is missing; run as root to write it" >&2
    fi
elif ! grep -q '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONTAINERS_CONF"; then
    echo "bootstrap: warning: $CONTAINERS_CONF does not set runtime = \"runc\" in [engine];" \
        "podman may fail (crun does not work with this host's cgroups)" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the project's metadata changed since the last install.
stamp=.venv/.afield-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: pip install -e .[dev]"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
