#!/usr/bin/env bash
# The dashboard's browser test (tests/app/dashboard) drives Debian's chromium through chromium-driver.
# Installs them when missing and this user may (root, or sudo without a password); otherwise says so
# and goes on: that test then fails with the same message, it is never skipped.
set -u
if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "ensure-browser: chromium and chromium-driver are missing and installing them needs root;" \
       "run: sudo apt-get install chromium chromium-driver (the dashboard's browser test fails until then)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-browser: no apt-get here; install chromium and chromedriver (the dashboard's browser test needs them)" >&2
  exit 0
fi
echo "ensure-browser: installing Debian's chromium and chromium-driver for the dashboard's browser test (apt-get)"
$SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
  || echo "ensure-browser: apt-get could not install chromium chromium-driver (see above); the dashboard's browser test will fail" >&2
exit 0
