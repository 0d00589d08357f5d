#!/usr/bin/env bash
# Debian packages the integration tests and benchmarks drive. Idempotent: skips apt entirely
# when everything is already installed.
set -euo pipefail

packages=(
  util-linux   # setpriv, runuser: run crmprof and servers as other users
  iproute2     # ip netns / veth / tc for network scenarios
  procps
  nginx        # real CRM servers the discovery tests start on loopback
  postgresql
  postgresql-client
  redis-server
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
# The tests start their own server instances on loopback: keep the packages' maintainer
# scripts from starting the system ones.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ "$had_policy" = 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
[ "$had_policy" = 0 ] && rm -f "$policy"
true
