//! crmprof: a host-level eBPF profiler for CRM server stacks.
//!
//! Data flows through the modules in this order:
//! [`probes`] (kernel programs and their maps) → [`discovery`] (which processes form which
//! service) → [`collection`] (map reads turned into per-window deltas) → [`profile`] (the
//! `crmprof.profile/v1` document) → [`verdict`] (time budget and bottleneck) → [`render`] (for
//! a person) and [`export`] (the data directory, Prometheus, OTLP), driven by [`run`].

pub mod cgroup;
pub mod check;
pub mod collection;
pub mod config;
pub mod discovery;
pub mod error;
pub mod export;
pub mod histogram;
pub mod host;
pub mod names;
pub mod probes;
pub mod profile;
pub mod render;
pub mod run;
pub mod verdict;
