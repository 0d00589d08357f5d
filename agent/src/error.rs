//! Errors of the library's stages. Each message says what failed, on what, and what to do.

use std::{io, path::PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "crmprof lacks {missing}: loading its probes needs CAP_BPF and CAP_PERFMON (or root); \
         grant them with `setcap cap_bpf,cap_perfmon+ep $(command -v crmprof)`, with \
         AmbientCapabilities= in its systemd unit, or run it as root"
    )]
    MissingPrivileges { missing: String },
    #[error(
        "kernel BTF is not readable at {path}: {reason}; crmprof needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later)"
    )]
    Btf { path: PathBuf, reason: String },
    #[error("could not load the BPF object: {0}")]
    Load(String),
    #[error("no probe group could be attached: {0}")]
    NothingAttached(String),
    #[error("map {name} is missing or has the wrong type: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("reading map {name}: {reason}")]
    MapRead { name: &'static str, reason: String },
    #[error("updating map {name}: {reason}")]
    MapWrite { name: &'static str, reason: String },
    #[error("attaching or detaching the {what}: {reason}")]
    Cycle { what: &'static str, reason: String },
}

#[derive(Debug, Error)]
pub enum DiscoveryError {
    #[error("no process with pid {0}; check the pid with `ps -p {0}`")]
    NoSuchPid(u32),
    #[error("reading {path}: {source}")]
    Proc { path: PathBuf, source: io::Error },
    #[error(
        "too many services: the limit is {limit}; raise `max_services` or select fewer processes"
    )]
    TooManyServices { limit: usize },
    #[error("comm {0:?} is longer than the kernel's 15 characters; use the truncated name")]
    CommTooLong(String),
}

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("{what}: {reason}")]
    Caps { what: &'static str, reason: String },
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(io::Error),
    #[error("checking the threads' capabilities after dropping them: {0}")]
    Verify(io::Error),
    #[error(
        "thread {tid} still holds capabilities ({field} {mask:016x}) after they were dropped; \
         this is a bug: capabilities must be dropped before any thread starts"
    )]
    ThreadKeptCapabilities {
        tid: String,
        field: &'static str,
        mask: u64,
    },
}
