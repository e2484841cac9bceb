#!/bin/sh
# Installs the Debian packages the test suite needs beyond pip's:
#   chromium          the browser the report test opens pages in (/usr/bin/chromium)
#   graphviz          dot, which lays out the report's operator graph
#   fonts-liberation  the fonts the report's screenshots are drawn with (a Recommends of chromium)
# Installs only what is missing, with apt-get, as root or through sudo. Prints nothing and exits 0 when all is
# there; otherwise says what it installs, and exits 1 naming what it could not install.
#
#   tools/setup_test_system.sh           install what is missing
#   tools/setup_test_system.sh --check   only say what is missing (exit 1 if anything is)
set -u

check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

installed() {  # installed PACKAGE: dpkg knows it as installed
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# What each package must provide; checked by file or command, so a system without dpkg can still pass.
present() {
    case "$1" in
        chromium) [ -x /usr/bin/chromium ] ;;
        graphviz) command -v dot >/dev/null 2>&1 ;;
        *) installed "$1" ;;
    esac
}

missing_now() {
    out=""
    for p in chromium graphviz fonts-liberation; do
        present "$p" || out="$out $p"
    done
    echo "${out# }"
}

missing=$(missing_now)
[ -z "$missing" ] && exit 0

if [ "$check_only" = 1 ]; then
    echo "missing system packages: $missing (tools/setup_test_system.sh installs them)" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install $missing: no apt-get here; install them with this system's package manager" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "cannot install $missing: not root and no password-less sudo; run as root: apt-get install $missing" >&2
    exit 1
fi

echo "installing $missing with apt-get" >&2
log=$(mktemp)
# shellcheck disable=SC2086  # $missing and $as_root are word lists on purpose
if ! { $as_root apt-get update -q && $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $missing; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
fi
rm -f "$log"

still=$(missing_now)
if [ -n "$still" ]; then
    echo "could not install: $still" >&2
    exit 1
fi
echo "installed $missing" >&2
