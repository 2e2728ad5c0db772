#!/usr/bin/env bash
# Debian packages the tests need: PostgreSQL + PostGIS for the loopback STAC API (pgstac);
# podman, buildah, runc and debootstrap to build and run the CPU image (tests/images).
# Installs what is missing when it can (root, or sudo without a password); otherwise
# stops and prints the one command to run. S2SAM_SKIP_SYSTEM_DEPS=1 goes on without them
# (the tests that need them then skip, with the reason).
set -euo pipefail
packages=("$@")
[ "${S2SAM_SKIP_SYSTEM_DEPS:-0}" = 1 ] && exit 0
if ! command -v dpkg >/dev/null 2>&1; then
    echo "make test: not a Debian-like system; install the equivalents of: ${packages[*]}" >&2
    echo "  (or set S2SAM_SKIP_SYSTEM_DEPS=1 to run without them: their tests skip)" >&2
    exit 1
fi
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [ "$(id -u)" -eq 0 ]; then
    sudo_=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_=(sudo)
else
    echo "make test: the tests need Debian packages that are not installed. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "then make test again (or S2SAM_SKIP_SYSTEM_DEPS=1 make test to skip their tests)." >&2
    exit 1
fi
echo "installing Debian packages the tests need: ${missing[*]}" >&2
"${sudo_[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
