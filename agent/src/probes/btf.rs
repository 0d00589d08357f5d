//! Kernel struct offsets from the running kernel's BTF. Rust eBPF has no CO-RE relocations, so the
//! few task_struct fields the programs read are located here and handed to them as globals.

use std::path::Path;

use btf_rs::{Btf, Type};

use crate::error::ProbeError;

/// Byte offsets the kernel programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
}

/// Parses the BTF at `path` (normally `/sys/kernel/btf/vmlinux`) for the offsets.
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, ProbeError> {
    let btf = Btf::from_file(path).map_err(|e| ProbeError::Btf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let missing = |what: &str| ProbeError::Btf {
        path: path.to_owned(),
        reason: format!("{what} not found"),
    };
    let task = btf
        .resolve_types_by_name("task_struct")
        .map_err(|_| missing("struct task_struct"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| missing("struct task_struct"))?;
    let offset_of = |field: &str| -> Result<u32, ProbeError> {
        task.members
            .iter()
            .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == field))
            .map(|m| m.bit_offset() / 8)
            .ok_or_else(|| missing(&format!("task_struct.{field}")))
    };
    Ok(TaskOffsets {
        pid: offset_of("pid")?,
        tgid: offset_of("tgid")?,
    })
}
