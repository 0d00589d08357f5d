//! Privileges: which capabilities the agent holds, named the way `capabilities(7)` names them.

use crate::error::ProbeError;

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set, from `/proc/self/status`.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
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
}
