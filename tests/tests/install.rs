//! Installing crmprof as a system agent: the systemd unit's exposure score, the shipped
//! configuration, an install → run → uninstall round trip into a scratch DESTDIR, and the
//! .deb's contents and maintainer scripts.
//!
//! `cargo xtask test` passes its own binary as CRMPROF_XTASK: these tests run
//! `xtask install`/`uninstall`/`package` through it with `--bin`, so nothing is rebuilt and
//! no nested cargo waits for the build lock this test run holds.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, DOCUMENTED_CAPS, Scratch, UNPRIVILEGED_UID, as_nobody, crmprof, privileged,
    validate_profile,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

fn unit_path() -> PathBuf {
    repo().join("deploy/systemd/crmprof.service")
}

/// The xtask binary `cargo xtask test` runs as.
fn xtask() -> PathBuf {
    std::env::var_os("CRMPROF_XTASK").map(PathBuf::from).expect(
        "CRMPROF_XTASK is not set: run these tests through `cargo xtask test` (or set it to \
         TARGET_DIR/debug/xtask)",
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `key=value` directives of a unit file, in order, per key.
fn unit_directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    out
}

/// The acceptance bar: `systemd-analyze security --offline=true` scores the unit 3.0 or
/// better, the unit parses without a warning, and it grants exactly the documented
/// capabilities with the hardening the issue asks for.
#[test]
fn systemd_unit_exposure_is_ok() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("running systemd-analyze (apt-get install systemd; deploy/ci/install-packages.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}{stderr}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("systemd-analyze security: {}", line.trim());
    assert!(
        score <= 3.0,
        "exposure {score} is above 3.0 (\"OK\"):\n{stdout}"
    );
    for bad in ["Unknown", "ignoring", "Failed", "rror"] {
        assert!(
            !stderr.contains(bad),
            "systemd-analyze complains about the unit:\n{stderr}"
        );
    }

    let unit = unit_directives(&fs::read_to_string(unit_path()).expect("reading the unit"));
    let documented: Vec<String> = DOCUMENTED_CAPS
        .iter()
        .map(|c| format!("CAP_{}", c.to_uppercase()))
        .collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let mut caps: Vec<String> = unit
            .get(key)
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect();
        caps.sort();
        assert_eq!(
            caps, documented,
            "{key}= must be the documented set (docs/privileges.md)"
        );
    }
    for (key, value) in [
        ("User", "crmprof"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/crmprof"),
        ("Restart", "on-failure"),
        ("UMask", "0077"),
    ] {
        assert_eq!(
            unit.get(key).and_then(|v| v.last()).map(String::as_str),
            Some(value),
            "{key}={value}"
        );
    }
    for key in [
        "SystemCallFilter",
        "MemoryMax",
        "RestartSec",
        "StartLimitBurst",
    ] {
        assert!(unit.contains_key(key), "the unit has no {key}=");
    }
}

/// The system calls a `SystemCallFilter=` value allows: `@group`s expanded through
/// `systemd-analyze syscall-filter`, names as they are.
fn expand_filter(value: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut pending: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(item) = pending.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let listing = run_ok(Command::new("systemd-analyze").args(["syscall-filter", &item]));
        for line in String::from_utf8_lossy(&listing.stdout).lines().skip(1) {
            let name = line.trim();
            if !name.is_empty() && !name.starts_with('#') {
                pending.push(name.to_owned());
            }
        }
    }
    out
}

/// The unit's seccomp filter cannot be applied here (no systemd as PID 1), so compare: every
/// system call `crmprof run` and `crmprof profile` make, counted by strace, must be in the
/// unit's allow list and not in its deny list (SystemCallErrorNumber=EPERM would fail them).
#[test]
fn unit_system_call_filter_allows_what_crmprof_calls() {
    if !privileged("unit_system_call_filter_allows_what_crmprof_calls") {
        return;
    }
    let unit = unit_directives(&fs::read_to_string(unit_path()).expect("reading the unit"));
    let filters = unit.get("SystemCallFilter").expect("SystemCallFilter=");
    let mut allowed = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for f in filters {
        match f.strip_prefix('~') {
            Some(deny) => denied.extend(expand_filter(deny)),
            None => allowed.extend(expand_filter(f)),
        }
    }
    let scratch = Scratch::new("strace");
    let data = scratch.0.join("data");
    let mut called = std::collections::BTreeSet::new();
    for (run, args) in [
        vec!["profile", "--duration", "1s", "--comm", "x"],
        vec![
            "run",
            "--interval",
            "1s",
            "--quiet",
            "--data-dir",
            data.to_str().expect("UTF-8"),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let summary = scratch.0.join(format!("strace-{run}.txt"));
        // `run` goes on until timeout sends SIGINT to strace and the agent (exit 124). Under
        // strace start-up is slow (BTF parsing, exporters): give it time to reach bpf(2).
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "INT", "15", "strace", "-f", "-c", "-o"])
            .arg(&summary)
            .arg(crmprof())
            .args(&args);
        let out = cmd
            .output()
            .expect("running strace (apt-get install strace)");
        assert!(
            matches!(out.status.code(), Some(0 | 124)),
            "{args:?} under strace failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = fs::read_to_string(&summary).expect("strace's summary");
        // Table rows end with the system call's name; the header, rules and total do not.
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 5
                && fields[0].parse::<f64>().is_ok()
                && let Some(name) = fields.last()
                && *name != "total"
            {
                called.insert((*name).to_owned());
            }
        }
    }
    assert!(called.contains("bpf"), "strace saw no bpf(2): {called:?}");
    // execve is strace starting the agent; systemd applies the filter after it.
    called.remove("execve");
    let refused: Vec<&String> = called
        .iter()
        .filter(|c| !allowed.contains(*c) || denied.contains(*c))
        .collect();
    println!("crmprof's system calls: {called:?}");
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?}"
    );
}

/// The commented default configuration is accepted by the agent itself.
#[test]
fn shipped_config_is_accepted() {
    assert!(
        crmprof().exists(),
        "{} is missing: run through cargo xtask test",
        crmprof().display()
    );
    let config = repo().join("deploy/crmprof.toml");
    let out = run_ok(
        Command::new(crmprof())
            .args(["config", "check"])
            .arg(&config),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

/// install into a scratch DESTDIR (prefix /usr/local), check every file and mode, run the
/// installed agent the way the unit does — an unprivileged user holding only the documented
/// capabilities, reading the installed configuration, writing the installed data directory —
/// then uninstall (configuration and data stay) and uninstall --purge (nothing stays).
#[test]
fn install_run_uninstall_round_trip() {
    if !privileged("install_run_uninstall_round_trip") {
        return;
    }
    let scratch = Scratch::new("install");
    let destdir = scratch.0.join("root");
    let staged = |p: &str| destdir.join(p.trim_start_matches('/'));
    let install = || {
        run_ok(
            Command::new(xtask())
                .arg("install")
                .arg("--destdir")
                .arg(&destdir)
                .arg("--bin")
                .arg(crmprof()),
        )
    };
    install();

    let binary = staged("/usr/local/bin/crmprof");
    let unit = staged("/usr/local/lib/systemd/system/crmprof.service");
    let config = staged("/etc/crmprof/crmprof.toml");
    let data = staged("/var/lib/crmprof");
    let docs = staged("/usr/local/share/doc/crmprof");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o640);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&staged("/var/lib")), 0o755, "parents stay 0755");
    assert!(docs.join("privileges.md").exists());
    let unit_text = fs::read_to_string(&unit).expect("reading the installed unit");
    assert!(
        unit_text
            .contains("ExecStart=/usr/local/bin/crmprof run --config /etc/crmprof/crmprof.toml"),
        "ExecStart follows the prefix:\n{unit_text}"
    );
    assert_eq!(
        fs::read_to_string(&config).expect("reading the installed config"),
        fs::read_to_string(repo().join("deploy/crmprof.toml")).expect("reading deploy/"),
    );
    run_ok(Command::new(&binary).args(["config", "check"]).arg(&config));

    // What a live install does for the service user (here nobody): the data directory is
    // its own, the configuration readable through its group.
    chown(&data, Some(UNPRIVILEGED_UID), Some(UNPRIVILEGED_UID)).expect("chown data");
    chown(&config, None, Some(UNPRIVILEGED_UID)).expect("chgrp config");
    let config_arg = config.to_str().expect("UTF-8 path");
    let data_arg = data.to_str().expect("UTF-8 path");
    let agent = Agent::start_command(as_nobody(&binary, DOCUMENTED_CAPS).args([
        "-v",
        "run",
        "--config",
        config_arg,
        "--data-dir",
        data_arg,
        "--interval",
        "1s",
        "--quiet",
    ]));
    let profiles = data.join("profiles.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && fs::read_to_string(&profiles)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            < 2
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    // systemd stops the unit with SIGTERM; the last window is written, the exit is clean.
    let (_, stderr) = agent.stop(libc::SIGTERM);
    let text = fs::read_to_string(&profiles).expect("profiles.jsonl written");
    assert!(text.lines().count() >= 2, "two windows at least:\n{stderr}");
    for line in text.lines() {
        validate_profile(&serde_json::from_str(line).expect("one JSON document per line"));
    }
    let meta = fs::metadata(&profiles).expect("stat profiles.jsonl");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), UNPRIVILEGED_UID, "written by the service user");

    // A reinstall keeps an edited configuration.
    let edited = format!(
        "{}interval = \"30s\"\n",
        fs::read_to_string(&config).expect("config")
    );
    fs::write(&config, &edited).expect("editing the config");
    install();
    assert_eq!(
        fs::read_to_string(&config).expect("config"),
        edited,
        "install overwrote an existing configuration"
    );

    run_ok(
        Command::new(xtask())
            .arg("uninstall")
            .arg("--destdir")
            .arg(&destdir),
    );
    for gone in [&binary, &unit, &docs] {
        assert!(!gone.exists(), "{} is still there", gone.display());
    }
    assert!(config.exists(), "uninstall keeps the configuration");
    assert!(profiles.exists(), "uninstall keeps the data");

    run_ok(
        Command::new(xtask())
            .args(["uninstall", "--purge", "--destdir"])
            .arg(&destdir),
    );
    let left: Vec<PathBuf> = walk(&destdir).into_iter().filter(|p| !p.is_dir()).collect();
    assert!(left.is_empty(), "files left after --purge: {left:?}");
    assert!(!staged("/etc/crmprof").exists() && !data.exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("listing") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// The .deb holds the same files as an install (prefix /usr), with the right modes, all
/// owned by root (the postinst hands the data directory and the configuration's group to
/// crmprof), the configuration as a conffile, and maintainer scripts that create the user on
/// configure and remove user and data on purge only.
#[test]
fn deb_contents_and_maintainer_scripts() {
    let scratch = Scratch::new("deb");
    run_ok(
        Command::new(xtask())
            .arg("package")
            .arg("--out-dir")
            .arg(&scratch.0)
            .arg("--bin")
            .arg(crmprof()),
    );
    let deb = fs::read_dir(&scratch.0)
        .expect("listing the output directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was built");

    let listing = String::from_utf8(run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout)
        .expect("UTF-8 listing");
    println!("{}:\n{listing}", deb.display());
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (perm, owner, path) = (fields[0], fields[1], fields[fields.len() - 1]);
        assert_eq!(owner, "root/root", "{line}");
        if !perm.starts_with('d') || path == "./var/lib/crmprof/" {
            files.insert(path.to_owned(), perm.to_owned());
        }
    }
    let expected: BTreeMap<String, String> = [
        ("./usr/bin/crmprof", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/crmprof.service", "-rw-r--r--"),
        ("./usr/share/doc/crmprof/README.md", "-rw-r--r--"),
        ("./usr/share/doc/crmprof/privileges.md", "-rw-r--r--"),
        ("./etc/crmprof/crmprof.toml", "-rw-r-----"),
        ("./var/lib/crmprof/", "drwx------"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(files, expected, "the .deb's files and modes");

    let field = |name: &str| {
        String::from_utf8(run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)).stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "crmprof");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(
        field("Depends").contains("adduser"),
        "postinst uses adduser"
    );

    let control = scratch.0.join("control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).expect("conffiles"),
        "/etc/crmprof/crmprof.toml\n"
    );
    let script = |name: &str| {
        let path = control.join(name);
        assert_eq!(mode(&path), 0o755, "{name} is executable");
        run_ok(Command::new("sh").arg("-n").arg(&path));
        fs::read_to_string(&path).expect("reading a maintainer script")
    };
    let postinst = script("postinst");
    for needle in [
        "adduser --system --group",
        "dpkg-statoverride --update --add crmprof crmprof 0700 /var/lib/crmprof",
        "dpkg-statoverride --update --add root crmprof 0640 /etc/crmprof/crmprof.toml",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle:?}");
    }
    assert!(script("prerm").contains("systemctl stop crmprof.service"));
    let postrm = script("postrm");
    let purge = postrm
        .split("if [ \"$1\" = \"purge\" ]; then")
        .nth(1)
        .expect("postrm acts on purge");
    for needle in [
        "rm -rf /var/lib/crmprof",
        "deluser --system",
        "dpkg-statoverride --remove",
    ] {
        assert!(
            purge.contains(needle),
            "postrm's purge branch lacks {needle:?}"
        );
    }
    assert!(
        !postrm
            .split("if [ \"$1\" = \"purge\" ]; then")
            .next()
            .unwrap_or_default()
            .contains("rm -rf"),
        "postrm removes data outside purge"
    );

    let unit = String::from_utf8(
        run_ok(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xOf - ./usr/lib/systemd/system/crmprof.service",
            deb.display()
        )))
        .stdout,
    )
    .expect("UTF-8 unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/crmprof run"),
        "the packaged unit runs /usr/bin/crmprof"
    );
}
