//! Privileges: which capabilities the agent holds, named the way `capabilities(7)` names them,
//! and giving up those it no longer needs once its programs are loaded.
//!
//! What each capability is for, and when it is dropped, is in `docs/privileges.md`.

use std::fs;

use caps::{CapSet, Capability, CapsHashSet};

use crate::error::{PrivilegeError, ProbeError};

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Why CAP_SYS_PTRACE is worth holding; shared by the log, `crmprof check` and the docs.
pub const SYS_PTRACE_USE: &str = "auto-discovery reads /proc/PID/exe of other users' processes \
                                  to name services by executable";

/// The effective capability set, from `/proc/self/status`.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_mask(&status, "CapEff:"))
        .unwrap_or(0)
}

pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// The capabilities missing for loading tracing programs, empty when the agent can load them.
/// CAP_SYS_ADMIN alone also suffices (it implies both on Linux 5.8+).
pub fn missing_for_bpf(caps: u64) -> Vec<&'static str> {
    if has(caps, CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(caps, CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(caps, CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

pub fn require_bpf() -> Result<(), ProbeError> {
    let missing = missing_for_bpf(effective());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::MissingPrivileges {
            missing: missing.join(" and "),
        })
    }
}

/// Gives up every capability except those of `keep` that the agent holds, for good: the
/// effective, permitted, inheritable and ambient sets are reduced, the bounding set too when
/// the agent may change it (CAP_SETPCAP), and `no_new_privs` is set so that no execve can gain
/// anything back. Returns the capabilities kept.
///
/// Capabilities belong to threads: call this before any thread is started. It checks every
/// thread of the process afterwards and fails if one still holds more than `keep`.
pub fn drop_all_except(keep: &[Capability]) -> Result<Vec<Capability>, PrivilegeError> {
    let caps_err = |what: &'static str| {
        move |e: caps::errors::CapsError| PrivilegeError::Caps {
            what,
            reason: e.to_string(),
        }
    };
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("reading the capability sets"))?;
    let kept: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();

    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient capability set"))?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_err("reading the capability sets"))?
    {
        let bounding =
            caps::read(None, CapSet::Bounding).map_err(caps_err("reading the capability sets"))?;
        for cap in bounding.difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err("reducing the capability bounding set"))?;
        }
    }
    let none = CapsHashSet::new();
    caps::set(None, CapSet::Inheritable, &none)
        .map_err(caps_err("clearing the inheritable capability set"))?;
    caps::set(None, CapSet::Effective, &kept)
        .map_err(caps_err("reducing the effective capability set"))?;
    caps::set(None, CapSet::Permitted, &kept)
        .map_err(caps_err("reducing the permitted capability set"))?;

    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }

    let allowed = kept.iter().fold(0u64, |m, c| m | c.bitmask());
    verify_threads(allowed)?;
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

/// Fails if any thread of this process holds a capability outside `allowed`.
fn verify_threads(allowed: u64) -> Result<(), PrivilegeError> {
    let tasks = fs::read_dir("/proc/self/task").map_err(PrivilegeError::Verify)?;
    for task in tasks {
        let task = task.map_err(PrivilegeError::Verify)?;
        let status =
            fs::read_to_string(task.path().join("status")).map_err(PrivilegeError::Verify)?;
        for field in ["CapEff:", "CapPrm:", "CapAmb:"] {
            let mask = status_mask(&status, field).unwrap_or(u64::MAX);
            if mask & !allowed != 0 {
                return Err(PrivilegeError::ThreadKeptCapabilities {
                    tid: task.file_name().to_string_lossy().into_owned(),
                    field: field.trim_end_matches(':'),
                    mask,
                });
            }
        }
    }
    Ok(())
}

/// A hexadecimal capability mask such as `CapEff:` from a `/proc/.../status` file.
fn status_mask(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_or_bpf_and_perfmon() {
        assert!(missing_for_bpf(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_for_bpf((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_for_bpf(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_for_bpf(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn our_numbers_are_the_kernels() {
        assert_eq!(u32::from(Capability::CAP_BPF.index()), CAP_BPF);
        assert_eq!(u32::from(Capability::CAP_PERFMON.index()), CAP_PERFMON);
        assert_eq!(u32::from(Capability::CAP_SYS_ADMIN.index()), CAP_SYS_ADMIN);
        assert_eq!(
            u32::from(Capability::CAP_SYS_PTRACE.index()),
            CAP_SYS_PTRACE
        );
    }

    #[test]
    fn status_masks_parse() {
        let status = "Name:\tx\nCapPrm:\t0000000000080000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(status_mask(status, "CapPrm:"), Some(1 << CAP_SYS_PTRACE));
        assert_eq!(status_mask(status, "CapEff:"), Some(0x1ff_ffff_ffff));
        assert_eq!(status_mask(status, "CapAmb:"), None);
    }
}
