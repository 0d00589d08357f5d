//! `crmprof check`: can the agent run here, and if not, exactly what to change.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    config::DEFAULT_SYSCALL_SAMPLE,
    probes::{
        LoadOptions, Probes,
        btf::offsets,
        privileges::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE, SYS_PTRACE_USE},
    },
};

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub name: String,
    /// "ok", "missing" (the agent cannot run or a group cannot), "warn" (it runs, with a feature
    /// limited), or "info".
    pub status: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub can_run: bool,
    pub items: Vec<Item>,
}

fn item(name: &str, status: &'static str, detail: String, fix: Option<&str>) -> Item {
    Item {
        name: name.to_owned(),
        status,
        detail,
        fix: fix.map(str::to_owned),
    }
}

/// Runs every check. Loading and attaching the probes is part of it: the only reliable answer
/// to "does this program type load here" is to load it.
pub fn run(btf_path: &Path) -> Report {
    let mut items = Vec::new();
    let mut can_run = true;

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let new_enough = kernel_at_least(&kernel, 5, 8);
    items.push(item(
        "kernel",
        if new_enough { "ok" } else { "missing" },
        format!("Linux {kernel}"),
        (!new_enough).then_some("crmprof needs Linux 5.8 or later (CAP_BPF, BTF, ring buffers)"),
    ));
    can_run &= new_enough;

    let caps = privileges::effective();
    let missing = privileges::missing_for_bpf(caps);
    let held: Vec<&str> = [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
    ]
    .iter()
    .filter(|(c, _)| privileges::has(caps, *c))
    .map(|(_, n)| *n)
    .collect();
    let fix = format!(
        "run as root, or grant {}: setcap cap_bpf,cap_perfmon+ep $(command -v crmprof), or \
         AmbientCapabilities=CAP_BPF CAP_PERFMON in the systemd unit",
        missing.join(" and ")
    );
    items.push(item(
        "privileges",
        if missing.is_empty() { "ok" } else { "missing" },
        if held.is_empty() {
            "no BPF-related capabilities held".to_owned()
        } else {
            format!("holds {}", held.join(", "))
        },
        (!missing.is_empty()).then_some(fix.as_str()),
    ));
    can_run &= missing.is_empty();

    // Not needed to run, but without it `crmprof run` sees only its own user's executables.
    let ptrace = privileges::has(caps, CAP_SYS_PTRACE);
    items.push(item(
        "privileges.ptrace",
        if ptrace { "ok" } else { "warn" },
        if ptrace {
            format!("holds CAP_SYS_PTRACE: {SYS_PTRACE_USE}")
        } else {
            "no CAP_SYS_PTRACE: auto-discovery (crmprof run, crmprof profile without --comm or \
             --pid) cannot name other users' processes and skips them"
                .to_owned()
        },
        (!ptrace).then_some(
            "grant CAP_SYS_PTRACE too: setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(command -v \
             crmprof), or AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYS_PTRACE (the shipped \
             unit does); or select processes with --comm/--pid, which needs no CAP_SYS_PTRACE",
        ),
    ));

    match offsets(btf_path) {
        Ok(o) => items.push(item(
            "btf",
            "ok",
            format!(
                "{} (task_struct.pid at {}, .tgid at {})",
                btf_path.display(),
                o.task_pid,
                o.task_tgid
            ),
            None,
        )),
        Err(e) => {
            can_run = false;
            items.push(item(
                "btf",
                "missing",
                e.to_string(),
                Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)"),
            ));
        }
    }

    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let mode = lockdown
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map_or("unknown", |w| w.trim_matches(['[', ']']));
    let confidential = mode == "confidentiality";
    items.push(item(
        "lockdown",
        if confidential { "missing" } else { "ok" },
        format!("mode {mode}"),
        confidential.then_some(
            "lockdown=confidentiality forbids reading kernel memory from BPF; boot with \
             lockdown=integrity or none",
        ),
    ));

    let tracefs = Path::new("/sys/kernel/tracing/events").exists();
    items.push(item(
        "tracefs",
        "info",
        if tracefs {
            "mounted at /sys/kernel/tracing".to_owned()
        } else {
            "not mounted; not needed: crmprof attaches raw and BTF-typed tracepoints only"
                .to_owned()
        },
        None,
    ));

    if can_run {
        match Probes::load(&LoadOptions {
            btf_path,
            report_all_execs: false,
            report_listens: false,
            max_threads: 1024,
            max_services: 16,
            syscall_sample: DEFAULT_SYSCALL_SAMPLE,
            disabled: &[],
        }) {
            Ok(probes) => {
                for (group, status) in &probes.status {
                    let ok = status.status == "attached";
                    items.push(Item {
                        name: format!("probes.{group}"),
                        status: if ok { "ok" } else { "missing" },
                        detail: if ok {
                            let mut d = format!("tracepoints {}", status.attach_points.join(", "));
                            if let Some(note) = &status.note {
                                d.push_str("; ");
                                d.push_str(note);
                            }
                            d
                        } else {
                            status.error.clone().unwrap_or_default()
                        },
                        fix: status.verifier_log.clone().map(|log| {
                            format!("the verifier rejected the program; its log:\n{log}")
                        }),
                    });
                }
                can_run &= probes.attached("syscalls");
            }
            Err(e) => {
                can_run = false;
                let detail = e.to_string();
                // The capabilities were checked above: EPERM now comes from a filter.
                let fix = (detail.contains("Operation not permitted") || detail.contains("EPERM"))
                    .then_some(
                        "the kernel refused bpf(2) although the capabilities are held: a seccomp \
                     filter (systemd SystemCallFilter=, a container runtime's default profile) \
                     or an LSM forbids it; allow the bpf system call",
                    );
                items.push(item("probes", "missing", detail, fix));
            }
        }
    }
    Report { can_run, items }
}

pub fn text(report: &Report) -> String {
    let mut out = String::new();
    for i in &report.items {
        let _ = writeln!(out, "{:<8} {:<18} {}", i.status, i.name, i.detail);
        if let Some(fix) = &i.fix {
            let _ = writeln!(out, "{:<8} {:<18} fix: {fix}", "", "");
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if report.can_run {
            "crmprof can run here"
        } else {
            "crmprof cannot run here: see the fixes above"
        }
    );
    out
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.44-fc-v669", 5, 8));
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("", 5, 8));
    }
}
