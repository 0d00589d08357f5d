#!/usr/bin/env bash
# Debian packages the integration tests, the deployment checks and benchmarks use. Idempotent:
# skips apt entirely when everything is already installed.
set -euo pipefail

packages=(
  util-linux   # setpriv: run crmprof unprivileged, with chosen capabilities, in tests
  iproute2     # ip netns / veth / tc for network scenarios
  procps
  systemd      # systemd-analyze security --offline for deploy/systemd/crmprof.service
  dpkg         # dpkg-deb: cargo xtask package and its test
  adduser      # the .deb's maintainer scripts (adduser/deluser)
  passwd       # useradd/userdel: cargo xtask install/uninstall on a live system
  python3-venv # a venv for kubernetes-validate (cargo xtask lint-kubernetes)
  strace       # the system calls crmprof makes, against the unit's SystemCallFilter=
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "    packages: all present"
  exit 0
fi
echo "    packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
