//! Helpers shared by the privileged integration tests: find the agent, decide whether this
//! machine can run a test (and say why not), start named workloads, validate documents.
//!
//! Tests panic with a message rather than return errors (as aya's do).
#![expect(clippy::expect_used, reason = "tests panic with a message")]

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

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("crmprof-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workload process whose comm is `name` (the kernel takes comm from the name it was
/// executed by, so it runs through a symlink of that name).
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
}

impl Workload {
    /// Starts `workload ARGS` as `name`. With `wait`, it blocks until [`Workload::release`].
    pub fn start(scratch: &Scratch, name: &str, wait: bool, args: &[&str]) -> Self {
        assert!(name.len() <= 15, "comm names are at most 15 bytes");
        let link = scratch.0.join(name);
        if !link.exists() {
            symlink(workload_bin(), &link).expect("linking the workload");
        }
        let mut cmd = Command::new(&link);
        if wait {
            cmd.arg("--wait");
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let stdin = child.stdin.take();
        Self { child, stdin }
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
}

/// A running `crmprof` whose stderr is watched for readiness.
pub struct Agent {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
}

impl Agent {
    /// Starts `crmprof -v ARGS` and waits (up to 30 s) until it logs that it is measuring.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(crmprof())
            .arg("-v")
            .args(args)
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
        let mut agent = Self {
            child,
            lines,
            stderr_seen: Vec::new(),
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

    /// Sends SIGINT (the window closes early) and returns stdout, asserting a zero exit.
    pub fn interrupt_and_output(self) -> String {
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().expect("waiting for crmprof");
        assert!(
            out.status.success(),
            "crmprof exited with {}; stderr: {}",
            out.status,
            self.stderr_seen.join("\n")
        );
        String::from_utf8(out.stdout).expect("crmprof writes UTF-8")
    }
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
