//! `cargo xtask install`, `uninstall` and `package`: the agent on a host as a system service.
//!
//! One staging function lays out every file, with its mode, for all three, so the .deb and a
//! source install hold the same files:
//!
//! | path | mode | owner (set at install time) |
//! | --- | --- | --- |
//! | `PREFIX/bin/crmprof` | 0755 | root |
//! | `PREFIX/lib/systemd/system/crmprof.service` | 0644 | root |
//! | `PREFIX/share/doc/crmprof/{README.md,privileges.md}` | 0644 | root |
//! | `/etc/crmprof/crmprof.toml` (never overwritten) | 0640 | root:crmprof |
//! | `/var/lib/crmprof/` | 0700 | crmprof:crmprof |
//!
//! With `--destdir` nothing on the host changes but the files under DESTDIR: the owners are
//! left to whoever installs the staged tree (the .deb's postinst does it).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    tasks,
    util::{is_root, output, release_binary, step, target_dir, workspace_root},
};

pub const USER: &str = "crmprof";
const CONFIG_DIR: &str = "/etc/crmprof";
const CONFIG: &str = "/etc/crmprof/crmprof.toml";
const DATA_DIR: &str = "/var/lib/crmprof";
/// Where the checked-in unit expects the binary and the docs (the .deb's prefix).
const UNIT_PREFIX: &str = "/usr";

/// Where the files go.
pub struct Layout {
    pub prefix: PathBuf,
    /// Staging root; `/` for a real installation.
    pub destdir: PathBuf,
}

impl Layout {
    pub fn new(prefix: &Path, destdir: Option<&Path>) -> anyhow::Result<Self> {
        if !prefix.is_absolute() {
            bail!("--prefix must be absolute, not {}", prefix.display());
        }
        let destdir = match destdir {
            Some(d) if d.is_relative() => std::env::current_dir()
                .context("reading the current directory")?
                .join(d),
            Some(d) => d.to_owned(),
            None => PathBuf::from("/"),
        };
        Ok(Self {
            prefix: prefix.to_owned(),
            destdir,
        })
    }

    /// Whether this installs onto the running system (no DESTDIR).
    pub fn is_live(&self) -> bool {
        self.destdir == Path::new("/")
    }

    fn binary(&self) -> PathBuf {
        self.prefix.join("bin/crmprof")
    }

    fn unit(&self) -> PathBuf {
        self.prefix.join("lib/systemd/system/crmprof.service")
    }

    fn doc_dir(&self) -> PathBuf {
        self.prefix.join("share/doc/crmprof")
    }

    /// An absolute path inside the staging root.
    pub fn staged(&self, path: &Path) -> PathBuf {
        self.destdir.join(path.strip_prefix("/").unwrap_or(path))
    }
}

pub struct InstallOptions<'a> {
    pub layout: Layout,
    /// Install this binary instead of building the release binary.
    pub binary: Option<&'a Path>,
}

/// `cargo xtask install`.
pub fn install(opts: &InstallOptions<'_>) -> anyhow::Result<()> {
    let layout = &opts.layout;
    if layout.is_live() && !is_root() {
        bail!(
            "installing into / needs root (sudo -E cargo xtask install), or stage the files \
             with --destdir DIR"
        );
    }
    let binary = match opts.binary {
        Some(b) => b.to_owned(),
        None => {
            tasks::build()?;
            release_binary()?
        }
    };
    eprintln!(
        "==> install: crmprof into {} (prefix {})",
        layout.destdir.display(),
        layout.prefix.display()
    );
    stage(layout, &binary)?;
    if layout.is_live() {
        ensure_user()?;
        set_owner(Path::new(DATA_DIR), Some(USER), Some(USER))?;
        set_owner(Path::new(CONFIG), None, Some(USER))?;
        if Path::new("/run/systemd/system").exists() {
            step(
                "install: systemctl daemon-reload",
                Command::new("systemctl").arg("daemon-reload"),
            )?;
        }
        eprintln!("    start it with: systemctl enable --now crmprof.service");
    } else {
        eprintln!(
            "    staged only: the owners ({USER} for {DATA_DIR}, root:{USER} for {CONFIG}) are \
             set by whoever installs the tree (the .deb's postinst does)"
        );
    }
    Ok(())
}

/// Lays out every file under `layout.destdir`. The configuration is written only when absent.
fn stage(layout: &Layout, binary: &Path) -> anyhow::Result<()> {
    let root = workspace_root();
    let deploy = root.join("deploy");
    copy(binary, &layout.staged(&layout.binary()), 0o755)?;

    let unit = read(&deploy.join("systemd/crmprof.service"))?;
    write(
        &layout.staged(&layout.unit()),
        &unit_for_prefix(&unit, &layout.prefix),
        0o644,
    )?;

    let docs = layout.staged(&layout.doc_dir());
    copy(&root.join("README.md"), &docs.join("README.md"), 0o644)?;
    copy(
        &root.join("docs/privileges.md"),
        &docs.join("privileges.md"),
        0o644,
    )?;

    mkdir(&layout.staged(Path::new(CONFIG_DIR)), 0o755)?;
    let config = layout.staged(Path::new(CONFIG));
    if config.exists() {
        eprintln!(
            "    kept the existing {} (the shipped default is deploy/crmprof.toml)",
            config.display()
        );
    } else {
        copy(&deploy.join("crmprof.toml"), &config, 0o640)?;
    }

    let data = layout.staged(Path::new(DATA_DIR));
    mkdir(&data, 0o700)?;
    // An existing directory keeps its owner, but never a wider mode.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", data.display()))?;
    Ok(())
}

/// The checked-in unit names `/usr/bin/crmprof` and `/usr/share/doc/crmprof`; another prefix
/// gets its own paths.
pub fn unit_for_prefix(unit: &str, prefix: &Path) -> String {
    let prefix = prefix.to_string_lossy();
    let prefix = prefix.trim_end_matches('/');
    unit.replace(
        &format!("{UNIT_PREFIX}/bin/crmprof"),
        &format!("{prefix}/bin/crmprof"),
    )
    .replace(
        &format!("{UNIT_PREFIX}/share/doc/crmprof"),
        &format!("{prefix}/share/doc/crmprof"),
    )
}

pub struct UninstallOptions {
    pub layout: Layout,
    /// Also remove the configuration, the data directory and (live) the service user.
    pub purge: bool,
}

/// `cargo xtask uninstall`: the reverse of install; the configuration and the data stay unless
/// `purge`.
pub fn uninstall(opts: &UninstallOptions) -> anyhow::Result<()> {
    let layout = &opts.layout;
    if layout.is_live() && !is_root() {
        bail!("uninstalling from / needs root (sudo -E cargo xtask uninstall)");
    }
    eprintln!("==> uninstall: crmprof from {}", layout.destdir.display());
    let systemd = layout.is_live() && Path::new("/run/systemd/system").exists();
    if systemd {
        // Stopping a unit that is not running is fine; a failure here must not keep files.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "crmprof.service"])
            .status();
    }
    remove(&layout.staged(&layout.binary()))?;
    remove(&layout.staged(&layout.unit()))?;
    remove(&layout.staged(&layout.doc_dir()))?;
    let config_dir = layout.staged(Path::new(CONFIG_DIR));
    let data = layout.staged(Path::new(DATA_DIR));
    if opts.purge {
        remove(&config_dir)?;
        remove(&data)?;
        if layout.is_live() && user_exists() {
            step(
                "uninstall: removing the service user",
                Command::new("userdel").arg(USER),
            )?;
        }
    } else {
        eprintln!(
            "    kept {} and {} (--purge removes them{})",
            config_dir.display(),
            data.display(),
            if layout.is_live() {
                " and the user crmprof"
            } else {
                ""
            }
        );
    }
    if systemd {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(())
}

pub struct PackageOptions<'a> {
    /// Where the .deb goes; `TARGET_DIR/debian` by default.
    pub out_dir: Option<&'a Path>,
    pub binary: Option<&'a Path>,
}

/// `cargo xtask package`: a .deb of the files `install` lays out with prefix /usr, built with
/// `dpkg-deb` from a staged tree, with maintainer scripts that create the service user.
/// Returns the path of the .deb.
pub fn package(opts: &PackageOptions<'_>) -> anyhow::Result<PathBuf> {
    let binary = match opts.binary {
        Some(b) => b.to_owned(),
        None => {
            tasks::build()?;
            release_binary()?
        }
    };
    let work = target_dir()?.join("debian");
    let out_dir = opts.out_dir.map_or_else(|| work.clone(), Path::to_owned);
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let layout = Layout {
        prefix: PathBuf::from(UNIT_PREFIX),
        destdir: root.clone(),
    };
    eprintln!("==> package: staging the files in {}", root.display());
    stage(&layout, &binary)?;

    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_owned())
        .context("dpkg --print-architecture failed; packaging needs dpkg (Debian/Ubuntu)")?;
    let control_dir = root.join("DEBIAN");
    mkdir(&control_dir, 0o755)?;
    let deb_src = workspace_root().join("deploy/debian");
    let control = read(&deb_src.join("control"))?
        .replace("@VERSION@", version)
        .replace("@ARCH@", &arch)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&root)?.to_string());
    write(&control_dir.join("control"), &control, 0o644)?;
    write(
        &control_dir.join("conffiles"),
        &format!("{CONFIG}\n"),
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(&deb_src.join(script), &control_dir.join(script), 0o755)?;
    }

    mkdir(&out_dir, 0o755)?;
    let deb = out_dir.join(format!("crmprof_{version}_{arch}.deb"));
    step(
        "package: dpkg-deb --build",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    eprintln!("    package: {}", deb.display());
    Ok(deb)
}

/// Installed-Size: the staged files in KiB, as dpkg-gencontrol counts them (roughly).
fn installed_size_kib(root: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            *total += meta.len().div_ceil(1024).max(1);
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

fn user_exists() -> bool {
    output(Command::new("getent").args(["passwd", USER])).is_some()
}

/// The system user the unit runs as: no home directory of its own beyond the data directory,
/// no login shell.
fn ensure_user() -> anyhow::Result<()> {
    if user_exists() {
        eprintln!("    user {USER}: exists");
        return Ok(());
    }
    step(
        "install: creating the system user crmprof",
        Command::new("useradd").args([
            "--system",
            "--user-group",
            "--home-dir",
            DATA_DIR,
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "crmprof profiler agent",
            USER,
        ]),
    )
}

fn set_owner(path: &Path, user: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    let id = |kind: &str, name: &str| -> anyhow::Result<u32> {
        output(Command::new("getent").args([kind, name]))
            .and_then(|line| line.split(':').nth(2)?.trim().parse().ok())
            .with_context(|| format!("looking up {kind} {name}"))
    };
    let uid = user.map(|u| id("passwd", u)).transpose()?;
    let gid = group.map(|g| id("group", g)).transpose()?;
    chown(path, uid, gid).with_context(|| format!("chown {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Creates `path` with `mode` (if missing), and its missing parents with 0755.
fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent, 0o755)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    eprintln!("    {mode:04o} {}", path.display());
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent, 0o755)?;
    }
    // Replace, not overwrite in place: a running binary cannot be written ("text file busy").
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", tmp.display()))?;
    fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    eprintln!("    {mode:04o} {}", to.display());
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => {
            eprintln!("    removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_follows_the_prefix() {
        let unit =
            "ExecStart=/usr/bin/crmprof run\nDocumentation=file:///usr/share/doc/crmprof/x\n";
        assert_eq!(unit_for_prefix(unit, Path::new("/usr")), unit);
        assert_eq!(
            unit_for_prefix(unit, Path::new("/usr/local/")),
            "ExecStart=/usr/local/bin/crmprof run\n\
             Documentation=file:///usr/local/share/doc/crmprof/x\n"
        );
    }

    #[test]
    fn staged_paths_stay_inside_destdir() {
        let layout = Layout::new(Path::new("/usr/local"), Some(Path::new("/tmp/d")));
        let layout = layout.ok();
        assert_eq!(
            layout.map(|l| l.staged(Path::new(CONFIG))),
            Some(PathBuf::from("/tmp/d/etc/crmprof/crmprof.toml"))
        );
    }
}
