#!/usr/bin/env bash
# Debian packages the integration tests, the deployment checks and benchmarks use. Idempotent:
# skips apt entirely when everything is already installed.
set -euo pipefail

packages=(
  util-linux   # setpriv, runuser: run crmprof and servers as other users
  iproute2     # ip netns / veth / tc for network scenarios
  procps
  nginx        # real CRM servers the discovery tests start on loopback
  postgresql
  postgresql-client
  redis-server
  redis-tools  # redis-benchmark: cargo xtask bench
  wrk          # load on nginx: the verdict suite and cargo xtask bench
  bpftrace     # cargo xtask bench: the per-syscall latency histogram crmprof is compared with
  bpftool      # cargo xtask bench: per-program run time from the kernel's BPF statistics
  prometheus   # tests/tests/export.rs: remote-write receiver and scraper (started by the tests)
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
# Packaged daemons (nginx, postgresql, redis, prometheus) must not start at install: the tests
# start their own, on loopback and free ports. policy-rc.d answering 101 tells invoke-rc.d
# "not now".
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
