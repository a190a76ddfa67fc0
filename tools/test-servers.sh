#!/bin/sh
# The servers the tests and benchmarks start that pip cannot install: redis-server and nginx,
# from the system's packages. Does nothing when they are there; on Debian or Ubuntu installs them with apt-get
# (through sudo unless run as root); elsewhere says what is missing and fails.
set -e
missing=""
for program in redis-server redis-cli; do
    command -v "$program" >/dev/null 2>&1 || missing="redis-server"
done
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests need: $missing (install it with your system's package manager)" >&2
    exit 1
fi
as_root=""
[ "$(id -u)" -eq 0 ] || as_root="sudo"
$as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq $missing >/dev/null
