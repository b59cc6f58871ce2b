#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
#   bash tests/run.sh [PYTEST ARGS...]
# As root it installs the Debian packages the tests drive (static busybox, musl, Go, Java,
# iperf3, curl, iproute2, a C compiler, OpenSSL's headers for the native connect path);
# otherwise it uses what is there and the tests that need a missing piece skip with a
# reason.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(gcc libc6-dev libssl-dev busybox-static musl-tools golang-go
                 default-jdk-headless iperf3 curl iproute2 socat groff-base)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for package in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "tests/run.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test,acceptance]'
exec "$PYTHON" -m pytest "$@"
