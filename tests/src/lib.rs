//! Helpers shared by the privileged integration tests: find the agent, decide whether this
//! machine can run a test (and say why not), start named workloads, validate documents.
//!
//! Tests panic with a message rather than return errors (as aya's do).
#![expect(clippy::expect_used, reason = "tests panic with a message")]

pub mod export;
pub mod servers;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The release binary `cargo xtask test` built (it sets CRMPROF_BIN); without the variable,
/// `release/crmprof` in the target directory these tests were built in.
pub fn crmprof() -> PathBuf {
    std::env::var_os("CRMPROF_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/<test> → target/release/crmprof
            exe.ancestors()
                .nth(3)
                .map_or_else(|| PathBuf::from("crmprof"), |t| t.join("release/crmprof"))
        },
        PathBuf::from,
    )
}

/// A name unique to this test process (comm names, namespaces, cgroups): `prefix` and the pid.
pub fn tag(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

/// The `workload` binary cargo built next to the test binaries (`target/<profile>/workload`;
/// tests run from `target/<profile>/deps/`).
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = dir.join("workload");
    assert!(
        bin.exists(),
        "{} is missing: build with cargo test",
        bin.display()
    );
    bin
}

/// Whether this machine can run privileged tests; prints why not.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP {test}: not root (the test loads BPF programs)");
        return false;
    }
    if std::fs::metadata("/sys/kernel/btf/vmlinux").is_err() {
        println!("SKIP {test}: no kernel BTF at /sys/kernel/btf/vmlinux");
        return false;
    }
    if !crmprof().exists() {
        panic!(
            "{} does not exist: run the tests through `cargo xtask test`",
            crmprof().display()
        );
    }
    true
}

/// A scratch directory removed on drop. A removal right after stopping a server that used it
/// sometimes failed (a process still exiting writes into it) and left hundreds of MiB behind,
/// so a failure is retried for up to 10 s and then reported.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        Self::in_dir(&std::env::temp_dir().to_string_lossy(), tag)
    }

    /// A scratch directory under `parent`. Those a killed run left (its pid gone; `Drop` never
    /// ran) are removed first: the verdict suite's hold hundreds of MiB.
    pub fn in_dir(parent: &str, tag: &str) -> Self {
        let prefix = format!("crmprof-test-{tag}-");
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = Path::new(parent).join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "could not remove {}: {e}; remove it by hand",
                        self.0.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// A workload process whose comm is `name` (the kernel takes comm from the name it was
/// executed by, so it runs through a symlink of that name).
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Workload {
    /// Starts `workload ARGS` as `name`. With `wait`, it blocks until [`Workload::release`].
    pub fn start(scratch: &Scratch, name: &str, wait: bool, args: &[&str]) -> Self {
        Self::start_in(scratch, &[], name, wait, args)
    }

    /// As [`Workload::start`], run through `wrapper` (e.g. `ip netns exec NS`).
    pub fn start_in(
        scratch: &Scratch,
        wrapper: &[&str],
        name: &str,
        wait: bool,
        args: &[&str],
    ) -> Self {
        assert!(name.len() <= 15, "comm names are at most 15 bytes");
        let link = scratch.0.join(name);
        if !link.exists() {
            symlink(workload_bin(), &link).expect("linking the workload");
        }
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&link);
                c
            }
            None => Command::new(&link),
        };
        if wait {
            cmd.arg("--wait");
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the workload prints (a port, a byte count).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        if let Some(out) = self.stdout.as_mut() {
            out.read_line(&mut line)
                .expect("reading the workload's output");
        }
        line.trim().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"g").expect("releasing the workload");
        }
    }

    pub fn wait_success(&mut self) {
        let status = self.child.wait().expect("waiting for the workload");
        assert!(status.success(), "workload failed: {status}");
    }

    /// Stops a workload that would run on (and reaps it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `crmprof` whose stderr is watched for readiness.
pub struct Agent {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
    guard: KillOnDrop,
}

/// Kills an agent a test did not stop (it panicked first): a leftover agent would go on
/// profiling, and slowing, everything after it.
struct KillOnDrop {
    pid: i32,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: kill with the pid of our own, not yet reaped, child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

impl Agent {
    /// Starts `crmprof -v ARGS` and waits (up to 30 s) until it logs that it is measuring.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(&[], args)
    }

    /// [`Agent::start`], with `env` added to crmprof's environment.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_command(
            Command::new(crmprof())
                .envs(env.iter().copied())
                .arg("-v")
                .args(args),
        )
    }

    /// Starts a command that runs crmprof (e.g. [`crmprof_as_nobody`]), and waits as
    /// [`Agent::start`] does.
    pub fn start_command(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crmprof");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let guard = KillOnDrop {
            pid: child.id() as i32,
            armed: true,
        };
        let mut agent = Self {
            child,
            lines,
            stderr_seen: Vec::new(),
            guard,
        };
        agent.wait_for_line("measuring", Duration::from_secs(30));
        agent
    }

    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "crmprof did not log {needle:?} within {timeout:?}; stderr so far:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// Collects the stderr lines logged so far into `stderr_seen`, without waiting.
    pub fn drain_stderr(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stderr_seen.push(line);
        }
    }

    /// Sends SIGINT (the window closes early) and returns stdout, asserting a zero exit.
    pub fn interrupt_and_output(self) -> String {
        self.interrupt().0
    }

    /// Sends SIGINT and returns stdout and all of stderr, asserting a zero exit.
    pub fn interrupt(self) -> (String, String) {
        self.stop(libc::SIGINT)
    }

    /// Sends `signal` (SIGINT or SIGTERM) and returns stdout and all of stderr, asserting a
    /// zero exit.
    /// SIGKILL, as a crash would: no clean shutdown.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL crmprof");
        let _ = self.child.wait();
        self.guard.armed = false;
    }

    pub fn stop(mut self, signal: i32) -> (String, String) {
        self.guard.armed = false;
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let out = self.child.wait_with_output().expect("waiting for crmprof");
        // The reader thread ends at EOF, after the exit.
        self.stderr_seen.extend(self.lines.iter());
        let stderr = self.stderr_seen.join("\n");
        assert!(
            out.status.success(),
            "crmprof exited with {}; stderr: {stderr}",
            out.status,
        );
        (
            String::from_utf8(out.stdout).expect("crmprof writes UTF-8"),
            stderr,
        )
    }
}

/// The capabilities docs/privileges.md documents, by setpriv's names: CAP_BPF and CAP_PERFMON
/// to load and attach, CAP_SYS_PTRACE for auto-discovery of other users' executables.
pub const DOCUMENTED_CAPS: &[&str] = &["bpf", "perfmon", "sys_ptrace"];

/// The user the least-privilege tests run crmprof as: nobody.
pub const UNPRIVILEGED_UID: u32 = 65534;

/// A command running `crmprof` through setpriv as the unprivileged user nobody, holding exactly
/// `caps` (setpriv's names, e.g. "bpf") in its inheritable, ambient and bounding sets, and no
/// other capability. Append crmprof's arguments.
pub fn crmprof_as_nobody(caps: &[&str]) -> Command {
    as_nobody(&crmprof(), caps)
}

/// A command running `program` as [`crmprof_as_nobody`] runs crmprof.
pub fn as_nobody(program: &Path, caps: &[&str]) -> Command {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={UNPRIVILEGED_UID}"))
        .arg(format!("--regid={UNPRIVILEGED_UID}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(program);
    cmd
}

/// One thread's capability sets, from `/proc/PID/task/TID/status`.
#[derive(Debug)]
pub struct ThreadCaps {
    pub tid: u32,
    pub permitted: u64,
    pub effective: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// The capability sets of every thread of `pid`.
pub fn thread_caps(pid: u32) -> Vec<ThreadCaps> {
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in a status file"))
            .to_owned()
    };
    let mask = |status: &str, name: &str| {
        u64::from_str_radix(&field(status, name), 16).expect("a hexadecimal capability mask")
    };
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("listing the threads") {
        let task = task.expect("a thread entry");
        let status = std::fs::read_to_string(task.path().join("status")).expect("thread status");
        out.push(ThreadCaps {
            tid: task
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("a numeric tid"),
            permitted: mask(&status, "CapPrm:"),
            effective: mask(&status, "CapEff:"),
            ambient: mask(&status, "CapAmb:"),
            no_new_privs: field(&status, "NoNewPrivs:") == "1",
        });
    }
    out
}

/// The profile schema, compiled once per call.
pub fn validate_profile(doc: &Value) {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/profile.schema.json");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&schema_path).expect("reading docs/profile.schema.json"),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "profile does not match docs/profile.schema.json:\n{}",
        errors.join("\n")
    );
}

/// The profiles `crmprof run` wrote to `data` of windows that lie wholly between `from` (plus
/// 0.2 s: a window's cycled probes attach at its start) and `to`, each checked against the
/// schema. Read it once the window after `to` has been written.
pub fn windows_within(
    data: &Path,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> Vec<Value> {
    let unix_ns = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64
    };
    let (from, to) = (unix_ns(from) + 200_000_000, unix_ns(to));
    let n = |v: &Value| v.as_u64().expect("a number");
    let text = std::fs::read_to_string(data.join("profiles.jsonl")).expect("profiles");
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line"))
        .inspect(validate_profile)
        .filter(|doc| {
            let window = &doc["window"];
            n(&window["start_unix_ns"]) >= from && n(&window["end_unix_ns"]) <= to
        })
        .collect()
}

/// The service named `name` in a profile document.
pub fn service<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// The syscall entry `syscall` of a service.
pub fn syscall<'a>(service: &'a Value, syscall: &str) -> Option<&'a Value> {
    service["syscalls"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == syscall)
}

pub fn parse_profile(stdout: &str) -> Value {
    let doc: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("crmprof printed no JSON document ({e}):\n{stdout}"));
    validate_profile(&doc);
    doc
}

/// The share of a service's non-idle thread time spent in each state: on CPU, run queue, and
/// each off-CPU reason except idle.
pub fn time_shares(service: &Value) -> Vec<(String, f64)> {
    let n = |v: &Value| v.as_u64().unwrap_or(0) as f64;
    let mut parts = vec![
        ("on_cpu".to_owned(), n(&service["cpu"]["on_cpu_ns"])),
        ("runqueue".to_owned(), n(&service["cpu"]["runqueue_ns"])),
    ];
    for reason in ["lock", "network", "disk", "sleep", "memory", "other"] {
        parts.push((
            reason.to_owned(),
            n(&service["offcpu"][format!("{reason}_ns")]),
        ));
    }
    let total: f64 = parts.iter().map(|(_, v)| v).sum();
    parts
        .into_iter()
        .map(|(k, v)| (k, if total > 0.0 { v / total } else { 0.0 }))
        .collect()
}

/// The state with the largest share, and that share.
pub fn dominant(service: &Value) -> (String, f64) {
    time_shares(service)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}

/// Whether `tool` is a file in one of `PATH`'s directories.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{cmd} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first line of /proc/stat (all CPUs), in ticks: user, nice, system, idle, iowait, irq,
/// softirq, steal, guest, guest_nice.
pub fn cpu_ticks() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Fraction of all CPUs busy over `over`, from /proc/stat.
pub fn cpu_busy(over: std::time::Duration) -> f64 {
    let sample = || -> (u64, u64) {
        let v = cpu_ticks();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (total - idle, total)
    };
    let (b0, t0) = sample();
    std::thread::sleep(over);
    let (b1, t1) = sample();
    if t1 == t0 {
        0.0
    } else {
        (b1 - b0) as f64 / (t1 - t0) as f64
    }
}

/// Waits (up to `timeout`) until something else's CPU use drops below `max_busy`, so a
/// scenario whose truth depends on an otherwise idle host gets one. Returns the last reading.
pub fn wait_for_quiet_cpu(max_busy: f64, timeout: std::time::Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let busy = cpu_busy(Duration::from_millis(500));
        if busy < max_busy || Instant::now() >= deadline {
            if busy >= max_busy {
                println!(
                    "note: the host stayed {:.0}% busy with other work",
                    busy * 100.0
                );
            }
            return busy;
        }
    }
}

/// A network namespace joined to the host by a veth pair: host side `SUBNET.1/24`, namespace
/// side `SUBNET.2/24`. Removed (with the pair) on drop, even when the test panics.
pub struct Netns {
    pub name: String,
    pub host_if: String,
}

impl Netns {
    pub fn new(name: &str, subnet: &str) -> Self {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        quiet(&["netns", "del", name]);
        remove_stale(subnet);
        let (host_if, ns_if) = (format!("{name}a"), format!("{name}b"));
        sh(&format!(
            "ip netns add {name} && ip link add {host_if} type veth peer name {ns_if} && \
             ip link set {ns_if} netns {name} && ip addr add {subnet}.1/24 dev {host_if} && \
             ip link set {host_if} up && ip -n {name} addr add {subnet}.2/24 dev {ns_if} && \
             ip -n {name} link set {ns_if} up && ip -n {name} link set lo up"
        ));
        Self {
            name: name.to_owned(),
            host_if,
        }
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

/// Removes what a killed run (whose `Drop` never ran) left holding `subnet`: its host-side
/// veth would still route the subnet, so this run's connections would reach the stale
/// namespace and be refused.
fn remove_stale(subnet: &str) {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "to", &format!("{subnet}.0/24")])
        .output()
        .expect("running ip");
    // "20: crmv3284a    inet 10.214.0.1/24 scope global crmv3284a"
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(link) = line.split_whitespace().nth(1) else {
            continue;
        };
        let link = link.split('@').next().unwrap_or(link);
        eprintln!("removing {link}, left holding {subnet}.0/24 by an earlier run");
        let _ = Command::new("ip").args(["link", "del", link]).status();
        if let Some(ns) = link.strip_suffix('a') {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for args in [
            ["link", "del", self.host_if.as_str()],
            ["netns", "del", self.name.as_str()],
        ] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
    }
}

/// One change of state of the probes of `crmprof run --bench-toggle`, as the agent logs it:
/// `bench toggle: probes on|off START END [slowest attaching|detaching PROGRAM NS]` (ns since
/// the epoch; then the change's slowest program step and how long it took).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Whether the probes are attached after it.
    pub on: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Its slowest step, as `attaching|detaching PROGRAM took MS ms`.
    pub slowest: Option<String>,
}

/// The changes logged in an agent's stderr, in order.
pub fn toggle_changes(stderr: &str) -> Vec<Transition> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("bench toggle: probes ")? + "bench toggle: probes ".len()..];
            let mut words = rest.split_whitespace();
            let on = match words.next()? {
                "on" => true,
                "off" => false,
                _ => return None,
            };
            let start_ns = words.next()?.parse().ok()?;
            let end_ns = words.next()?.parse().ok()?;
            let slowest = match (words.next(), words.next(), words.next(), words.next()) {
                (Some("slowest"), Some(verb), Some(program), Some(ns)) => {
                    let ms = ns.parse::<u64>().ok()? as f64 / 1e6;
                    Some(format!("{verb} {program} took {ms:.1} ms"))
                }
                _ => None,
            };
            Some(Transition {
                on,
                start_ns,
                end_ns,
                slowest,
            })
        })
        .collect()
}

#[cfg(test)]
mod toggle_tests {
    use super::{Transition, toggle_changes};

    #[test]
    fn toggle_changes_are_read_from_the_agents_log_lines() {
        let log = "[2026-11-28T02:37:58Z INFO ] measuring 1 services\n\
                   [2026-11-28T02:37:58Z INFO ] bench toggle: probes off 100 200\n\
                   [2026-11-28T02:37:59Z INFO ] bench toggle: probes on 300 450 slowest \
                   attaching sched_switch 2500000\n\
                   [2026-11-28T02:37:59Z INFO ] bench toggle: probes sideways 1 2\n";
        assert_eq!(
            toggle_changes(log),
            vec![
                Transition {
                    on: false,
                    start_ns: 100,
                    end_ns: 200,
                    slowest: None,
                },
                Transition {
                    on: true,
                    start_ns: 300,
                    end_ns: 450,
                    slowest: Some("attaching sched_switch took 2.5 ms".to_owned()),
                },
            ]
        );
    }
}
