#!/usr/bin/env python3
"""Validate deploy/kubernetes: every document against the Kubernetes API's JSON schemas
(kubernetes-validate, strict: unknown fields are errors), then crmprof's privilege policy for the
DaemonSet, checked against the systemd unit so the two grant the same capabilities.

usage: check-kubernetes.py [--crmprof BIN] DIR UNIT
With --crmprof, the ConfigMap's crmprof.toml must pass `BIN config check`.
Run by `cargo xtask lint-kubernetes` (and `cargo xtask test`) in a venv with kubernetes-validate.
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

# The oldest Kubernetes the manifests claim to work with, and the newest the schemas know.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]

failures = []


def fail(msg):
    failures.append(msg)


def unit_directives(path):
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def size_bytes(text):
    """A Kubernetes quantity (512Mi) or a systemd size (512M, base 1024) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", text)
    if not m:
        raise ValueError(f"not a size: {text}")
    factor = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(m.group(1)) * factor[m.group(2)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crmprof")
    parser.add_argument("dir")
    parser.add_argument("unit")
    args = parser.parse_args()

    docs = []
    files = sorted(pathlib.Path(args.dir).glob("*.yaml"))
    if not files:
        fail(f"no manifests in {args.dir}")
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            docs.append((path.name, doc))
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{path.name}: {doc.get('kind')} is invalid for Kubernetes {version}: "
                         f"{e.message} at {'/'.join(map(str, e.path))}")
                except Exception as e:  # schema not found, etc.
                    fail(f"{path.name}: cannot validate for Kubernetes {version}: {e}")
            print(f"    schema ok: {path.name}: {doc.get('kind')} {doc['metadata'].get('name')}")

    unit = unit_directives(args.unit)
    unit_caps = sorted(c.removeprefix("CAP_") for c in " ".join(unit["AmbientCapabilities"]).split())
    bounding = sorted(c.removeprefix("CAP_") for c in " ".join(unit["CapabilityBoundingSet"]).split())
    if unit_caps != bounding:
        fail(f"unit: AmbientCapabilities {unit_caps} != CapabilityBoundingSet {bounding}")

    daemonsets = [d for _, d in docs if d["kind"] == "DaemonSet"]
    if len(daemonsets) != 1:
        fail(f"expected one DaemonSet, found {len(daemonsets)}")
        return
    pod = daemonsets[0]["spec"]["template"]["spec"]
    if pod.get("hostPID") is not True:
        fail("DaemonSet: hostPID must be true (the agent watches the host's processes)")
    if pod.get("hostNetwork"):
        fail("DaemonSet: hostNetwork is not needed")
    for c in pod["containers"]:
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            fail(f"{name}: privileged must not be set; grant the capabilities instead")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            fail(f"{name}: capabilities.drop must be [ALL], is {caps.get('drop')}")
        if sorted(caps.get("add", [])) != unit_caps:
            fail(f"{name}: capabilities.add {sorted(caps.get('add', []))} differs from the "
                 f"systemd unit's {unit_caps}")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    fail(f"{name}: resources.{kind}.{r} is missing")
        limit = res.get("limits", {}).get("memory")
        if limit and size_bytes(limit) != size_bytes(unit["MemoryMax"][0]):
            fail(f"{name}: memory limit {limit} differs from the unit's MemoryMax "
                 f"{unit['MemoryMax'][0]}")
        ports = {p.get("name"): p for p in c.get("ports", [])}
        if ports.get("metrics", {}).get("containerPort") != 9464:
            fail(f"{name}: a port named metrics must be 9464")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        if not mounts.get("/etc/crmprof", {}).get("readOnly"):
            fail(f"{name}: the configuration must be mounted read-only at /etc/crmprof")

    configs = [d for _, d in docs if d["kind"] == "ConfigMap" and "crmprof.toml" in d.get("data", {})]
    if len(configs) != 1:
        fail("expected one ConfigMap with crmprof.toml")
    elif args.crmprof:
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(configs[0]["data"]["crmprof.toml"])
            f.flush()
            r = subprocess.run([args.crmprof, "config", "check", f.name], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"ConfigMap crmprof.toml: {r.stderr.strip()}")
            else:
                print("    ConfigMap crmprof.toml: crmprof config check ok")

    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)
    print(f"    policy ok: hostPID, capabilities {unit_caps} as in the unit, no privileged, "
          f"read-only root, resources, metrics port 9464")


if __name__ == "__main__":
    main()
