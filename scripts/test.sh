#!/bin/sh
# Install what the test suite needs and run all of it (the README's and CI's
# test command). As root with apt-get, missing compilers/binutils are
# installed from Debian; the end-to-end test installs QEMU & co. itself.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k fixtures -x`.
set -eu
cd "$(dirname "$0")/.."

need=""
for pair in \
    x86_64-linux-gnu-gcc:gcc \
    aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu \
    arm-linux-gnueabihf-gcc:gcc-arm-linux-gnueabihf \
    aarch64-linux-gnu-ld:binutils-aarch64-linux-gnu \
    arm-linux-gnueabihf-ld:binutils-arm-linux-gnueabihf \
    objcopy:binutils \
    shellcheck:shellcheck; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
done
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts/test.sh: installing$need"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
    else
        echo "scripts/test.sh: missing$need (tests that need them will skip)" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
