#!/usr/bin/env bash
# The programs some tests run besides Python: redis-server (the tests start their own, never touching one
# on 6379), promtool (Debian package prometheus) and nginx (deploy/'s checks). Run as root, installs the
# missing ones with apt; otherwise installs nothing, and the test run says which checks it skips and why.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]; }

missing=()
have redis-server || missing+=(redis-server)
have promtool || missing+=(prometheus)
have nginx || missing+=(nginx)
# the README's shell examples (tests/test_readme.py) call the service with curl and read its answers with jq
have curl || missing+=(curl)
have jq || missing+=(jq)
# clang and its sanitizer runtimes build the C reader for the coverage-guided fuzzer (tests/app/wire/test_fuzz.py)
have clang || missing+=(clang libclang-rt-14-dev)
# the browser tests (tests/browser) render the service's pages in the system's Chromium
have chromium || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "test-deps: not root (or no apt-get): not installing ${missing[*]}; the tests that need them are skipped"
fi
