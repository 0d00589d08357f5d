//! `cargo xtask lint-kubernetes`: deploy/kubernetes against the Kubernetes API's JSON schemas
//! (strict: an unknown or misspelt field fails) and crmprof's privilege policy.
//!
//! kubeconform and kubeval are not packaged for Debian; `kubernetes-validate` from PyPI bundles
//! the schemas of every Kubernetes release and works offline once installed. It goes into a
//! venv under the target directory, once.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::util::{release_binary, step, target_dir, workspace_root};

/// Pinned so that a new release of the validator cannot change CI's verdict unannounced.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn lint() -> anyhow::Result<()> {
    let venv = target_dir()?.join("venv");
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args(["-c", "import kubernetes_validate, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        eprintln!("    kubernetes-validate: found in {}", venv.display());
    } else {
        // Debian's own python3 (with python3-venv, see deploy/ci/install-packages.sh) when
        // present, so that CI does not depend on a user's Python setup.
        let system_python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        step(
            "lint-kubernetes: creating a venv for kubernetes-validate",
            Command::new(system_python).args(["-m", "venv"]).arg(&venv),
        )
        .context("python3 -m venv failed; install python3-venv (deploy/ci/install-packages.sh)")?;
        step(
            &format!("lint-kubernetes: pip install {KUBERNETES_VALIDATE} (about 20 s, once)"),
            Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                KUBERNETES_VALIDATE,
            ]),
        )?;
    }
    let root = workspace_root();
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("deploy/ci/check-kubernetes.py"));
    // The ConfigMap's configuration is checked by the agent itself when it has been built.
    let binary = release_binary()?;
    if binary.exists() {
        cmd.arg("--crmprof").arg(binary);
    }
    cmd.arg(root.join("deploy/kubernetes"))
        .arg(root.join("deploy/systemd/crmprof.service"));
    step(
        "lint-kubernetes: schemas (strict) and privilege policy of deploy/kubernetes",
        &mut cmd,
    )
}
