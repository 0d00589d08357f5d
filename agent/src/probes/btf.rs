//! Kernel struct offsets from the running kernel's BTF. Rust eBPF has no CO-RE relocations, so
//! the few fields the programs read are located here and handed to them in one global.

use std::path::Path;

use agent_ebpf::Offsets;
use btf_rs::{Btf, Type};

use crate::error::ProbeError;

/// A field this kernel does not have.
pub const MISSING: u32 = u32::MAX;

/// Parses the BTF at `path` (normally `/sys/kernel/btf/vmlinux`). `task_struct.pid/tgid` are
/// required; other fields are [`MISSING`] when absent, and the groups needing them do not attach.
pub fn offsets(path: &Path) -> Result<Offsets, ProbeError> {
    // Read whole, then parsed from memory: parsing from the file seeks once per type (~100k
    // lseek calls for a distribution kernel's 5 MiB), which under strace takes seconds.
    let unreadable = |reason: String| ProbeError::Btf {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let btf = Btf::from_bytes(&bytes).map_err(|e| unreadable(e.to_string()))?;
    let required = |ty: &str, field: &str| {
        field_offset(&btf, ty, field).ok_or_else(|| unreadable(format!("{ty}.{field} not found")))
    };
    let optional = |ty: &str, field: &str| field_offset(&btf, ty, field).unwrap_or(MISSING);
    // A member of an embedded struct: `outer.member` (of type `struct inner`), then `field`.
    let nested = |outer: &str, member: &str, inner: &str, field: &str| match (
        field_offset(&btf, outer, member),
        field_offset(&btf, inner, field),
    ) {
        (Some(a), Some(b)) => a + b,
        _ => MISSING,
    };
    // The programs read `stime` 8 bytes after `utime`.
    let utime = optional("task_struct", "utime");
    let stime = optional("task_struct", "stime");
    let task_utime = if utime != MISSING && stime == utime + 8 {
        utime
    } else {
        MISSING
    };
    Ok(Offsets {
        task_pid: required("task_struct", "pid")?,
        task_tgid: required("task_struct", "tgid")?,
        skc_daddr: optional("sock_common", "skc_daddr"),
        skc_dport: optional("sock_common", "skc_dport"),
        skc_num: optional("sock_common", "skc_num"),
        skc_family: optional("sock_common", "skc_family"),
        skc_v6_daddr: optional("sock_common", "skc_v6_daddr"),
        rq_bio: optional("request", "bio"),
        rq_cmd_flags: optional("request", "cmd_flags"),
        rq_part: optional("request", "part"),
        bdev_dev: optional("block_device", "bd_dev"),
        bio_private: optional("bio", "bi_private"),
        regs_ax: optional("pt_regs", "ax"),
        regs_orig_ax: optional("pt_regs", "orig_ax"),
        task_run_delay: nested("task_struct", "sched_info", "sched_info", "run_delay"),
        task_last_queued: nested("task_struct", "sched_info", "sched_info", "last_queued"),
        task_cfs_rq: nested("task_struct", "se", "sched_entity", "cfs_rq"),
        cfs_rq_rq: optional("cfs_rq", "rq"),
        rq_clock: optional("rq", "clock"),
        task_utime,
        task_maj_flt: optional("task_struct", "maj_flt"),
        task_start_time: optional("task_struct", "start_time"),
        task_flags: optional("task_struct", "flags"),
    })
}

/// Whether `sched_switch` can tell, from the incoming task itself, how long it waited on the run
/// queue since it was woken (the kernel's `sched_info`, `CONFIG_SCHED_INFO`): then no
/// `sched_wakeup` program is needed to mark the wakeup.
pub fn run_queue_wait_in_task(o: &Offsets) -> bool {
    [
        o.task_run_delay,
        o.task_last_queued,
        o.task_cfs_rq,
        o.cfs_rq_rq,
        o.rq_clock,
    ]
    .iter()
    .all(|&off| off != MISSING)
}

/// Fields a probe group needs, by name, for reporting what is missing.
pub fn missing_fields(o: &Offsets, group: &str) -> Vec<&'static str> {
    let fields: &[(&str, u32)] = match group {
        "net" => &[
            ("sock_common.skc_daddr", o.skc_daddr),
            ("sock_common.skc_dport", o.skc_dport),
            ("sock_common.skc_num", o.skc_num),
            ("sock_common.skc_family", o.skc_family),
            ("sock_common.skc_v6_daddr", o.skc_v6_daddr),
        ],
        "disk" => &[
            ("request.bio", o.rq_bio),
            ("request.cmd_flags", o.rq_cmd_flags),
            ("request.part", o.rq_part),
            ("block_device.bd_dev", o.bdev_dev),
            ("bio.bi_private", o.bio_private),
        ],
        _ => &[],
    };
    let mut missing: Vec<&'static str> = fields
        .iter()
        .filter(|(_, off)| *off == MISSING)
        .map(|(name, _)| *name)
        .collect();
    // The socket programs read a socket's addresses, hash and ports in one go (its fingerprint)
    // and take the ports from it.
    if group == "net"
        && missing.is_empty()
        && (o.skc_dport != o.skc_daddr.wrapping_add(12) || o.skc_num != o.skc_dport + 2)
    {
        missing.push("sock_common.skc_dport and skc_num 12 and 14 bytes after skc_daddr");
    }
    // sched_switch reads the incoming task's pid and tgid in one go.
    if group == "sched" && o.task_tgid != o.task_pid.wrapping_add(4) {
        missing.push("task_struct.tgid right after task_struct.pid");
    }
    missing
}

/// Byte offset of `field` in `struct ty`, looking through anonymous struct and union members
/// (`sock_common` keeps most fields in them).
fn field_offset(btf: &Btf, ty: &str, field: &str) -> Option<u32> {
    btf.resolve_types_by_name(ty)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => find_in(btf, &s.members, field, 0),
            _ => None,
        })
}

fn find_in(btf: &Btf, members: &[btf_rs::Member], field: &str, base_bits: u32) -> Option<u32> {
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let bits = base_bits + m.bit_offset();
        if name == field {
            return Some(bits / 8);
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m).ok()? {
                Type::Struct(s) | Type::Union(s) => Some(s.members),
                _ => None,
            };
            if let Some(inner) = inner
                && let Some(off) = find_in(btf, &inner, field, bits)
            {
                return Some(off);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF when there is one: the offsets must be found and plausible.
    #[test]
    fn finds_fields_in_anonymous_members() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            println!("skipped: no kernel BTF here");
            return;
        }
        let o = offsets(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            o.task_tgid == o.task_pid + 4,
            "pid and tgid are adjacent: {o:?}"
        );
        assert!(
            o.skc_dport != MISSING && o.skc_num == o.skc_dport + 2,
            "{o:?}"
        );
        assert!(o.skc_daddr != MISSING && o.skc_family != MISSING, "{o:?}");
        assert!(missing_fields(&o, "net").is_empty());
        // Fields of embedded structs: task_struct.sched_info.*, task_struct.se.cfs_rq.
        assert!(run_queue_wait_in_task(&o), "{o:?}");
        assert!(
            o.task_last_queued > o.task_run_delay && o.task_last_queued - o.task_run_delay < 64,
            "both in task_struct.sched_info: {o:?}"
        );
        // The task's own counters: CPU time by mode, major faults.
        assert!(
            [
                o.task_utime,
                o.task_maj_flt,
                o.task_start_time,
                o.task_flags
            ]
            .iter()
            .all(|&off| off != MISSING),
            "{o:?}"
        );
        // A kernel whose ports are not where the fingerprint expects them runs no socket
        // programs, and says why.
        let moved = Offsets {
            skc_dport: o.skc_dport + 4,
            skc_num: o.skc_num + 4,
            ..o
        };
        assert_eq!(
            missing_fields(&moved, "net"),
            ["sock_common.skc_dport and skc_num 12 and 14 bytes after skc_daddr"]
        );
    }
}
