//! Services: which processes are profiled, under which name.
//!
//! A service is a named set of processes with a small id the kernel knows it by. The initial
//! set comes from one read of `/proc`; after that the kernel follows forks (children inherit
//! their parent's service) and `--comm` rules at exec itself, and sends rare lifecycle events
//! (exec, exit, listen) that this module uses to name new processes. No `/proc` polling loop.

pub mod classify;
pub mod procfs;

use std::collections::{BTreeSet, HashMap};

use agent_ebpf::{NO_SERVICE, ProcEvent, proc_event};
pub use classify::Rule;
pub use procfs::ProcInfo;

use crate::{
    config::{CompiledRule, Discovery},
    error::{DiscoveryError, ProbeError},
    probes::Probes,
};

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Config rules first, then (when `[discovery] auto`) every other process.
    Discover,
    /// Only the named processes (`--comm`, `--pid`).
    Explicit { comms: Vec<String>, pids: Vec<u32> },
}

/// Where selections go: the kernel's map, or nowhere (`crmprof services`).
pub trait Selector {
    fn set_service(&mut self, tgid: u32, service: u16) -> Result<(), ProbeError>;
    fn add_comm_rule(&mut self, comm: &str, service: u16) -> Result<(), ProbeError>;
    fn add_listener(&mut self, port: u16, service: u16) -> Result<(), ProbeError>;
}

impl Selector for Probes {
    fn set_service(&mut self, tgid: u32, service: u16) -> Result<(), ProbeError> {
        Probes::set_service(self, tgid, service)
    }
    fn add_comm_rule(&mut self, comm: &str, service: u16) -> Result<(), ProbeError> {
        Probes::add_comm_rule(self, comm, service)
    }
    fn add_listener(&mut self, port: u16, service: u16) -> Result<(), ProbeError> {
        Probes::add_listener(self, port, service)
    }
}

/// A selector that selects nothing: for listing what discovery would do.
pub struct DryRun;

impl Selector for DryRun {
    fn set_service(&mut self, _: u32, _: u16) -> Result<(), ProbeError> {
        Ok(())
    }
    fn add_comm_rule(&mut self, _: &str, _: u16) -> Result<(), ProbeError> {
        Ok(())
    }
    fn add_listener(&mut self, _: u16, _: u16) -> Result<(), ProbeError> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Service {
    pub id: u16,
    pub name: String,
    /// The rule that created the service.
    pub rule: Rule,
    /// Processes alive in the service now.
    pub live: BTreeSet<u32>,
    /// Processes seen in the service during the current window.
    pub window: BTreeSet<u32>,
}

pub struct Options {
    pub selection: Selection,
    pub rules: Vec<CompiledRule>,
    pub discovery: Discovery,
    pub max_services: usize,
}

/// The services and their processes.
pub struct Registry {
    opts: Options,
    services: Vec<Service>,
    by_name: HashMap<String, u16>,
    by_pid: HashMap<u32, u16>,
    /// Services that could not be created because `max_services` was reached.
    pub services_over_limit: u64,
    own_pid: u32,
    port_rules: bool,
}

impl Registry {
    pub fn new(opts: Options) -> Self {
        let port_rules = opts.rules.iter().any(|r| r.port.is_some());
        Self {
            opts: Options {
                max_services: opts.max_services.min(usize::from(u16::MAX) - 1),
                ..opts
            },
            services: Vec::new(),
            by_name: HashMap::new(),
            by_pid: HashMap::new(),
            services_over_limit: 0,
            own_pid: std::process::id(),
            port_rules,
        }
    }

    pub fn selection(&self) -> &Selection {
        &self.opts.selection
    }

    /// Whether the kernel must report every exec (so new processes can be named).
    pub fn wants_all_execs(&self) -> bool {
        self.opts.selection == Selection::Discover
    }

    /// Whether the kernel must report listens (for `port` rules).
    pub fn wants_listens(&self) -> bool {
        self.port_rules && self.opts.selection == Selection::Discover
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: u16) -> Option<&Service> {
        self.services.get(usize::from(id).checked_sub(1)?)
    }

    /// Processes currently in a service.
    pub fn tracked_processes(&self) -> usize {
        self.by_pid.len()
    }

    /// Resolves the selection against `/proc` and tells the kernel. Rules that must catch later
    /// processes are installed before the scan, so nothing starting meanwhile is missed.
    pub fn start(&mut self, sel: &mut dyn Selector) -> Result<(), StartError> {
        let selection = self.opts.selection.clone();
        match &selection {
            Selection::Explicit { comms, pids } => {
                for comm in comms {
                    if comm.len() > 15 {
                        return Err(DiscoveryError::CommTooLong(comm.clone()).into());
                    }
                    let id = self.service_id(comm, Rule::Comm(comm.clone()))?;
                    sel.add_comm_rule(comm, id)?;
                }
                for &pid in pids {
                    if procfs::read_comm(pid).is_none() {
                        return Err(DiscoveryError::NoSuchPid(pid).into());
                    }
                }
                let procs = procfs::scan();
                for p in &procs {
                    if comms.contains(&p.comm)
                        && let Some(&id) = self.by_name.get(&p.comm)
                    {
                        self.assign(p.pid, id, sel)?;
                    }
                }
                for &pid in pids {
                    let comm = procfs::read_comm(pid).ok_or(DiscoveryError::NoSuchPid(pid))?;
                    let id = self.service_id(&comm, Rule::Pid(pid))?;
                    for member in procfs::descendants(&procs, pid) {
                        self.assign(member, id, sel)?;
                    }
                }
            }
            Selection::Discover => {
                let procs = procfs::scan();
                let ports = if self.port_rules {
                    procfs::listening_ports(&procs)
                } else {
                    HashMap::new()
                };
                for p in &procs {
                    let listening = ports.get(&p.pid).map_or(&[][..], Vec::as_slice);
                    if let Some((name, rule)) = self.classify(p, listening) {
                        // A full registry is counted in `services_over_limit`; keep going.
                        if let Ok(id) = self.service_id(&name, rule) {
                            self.assign(p.pid, id, sel)?;
                        }
                    }
                }
            }
        }
        self.seed_listeners(sel)
    }

    /// Tells the kernel which ports the selected services already listen on, so their accepted
    /// connections are counted and their clients recognised as inbound.
    fn seed_listeners(&mut self, sel: &mut dyn Selector) -> Result<(), StartError> {
        let selected: Vec<ProcInfo> = self
            .by_pid
            .keys()
            .filter_map(|&pid| procfs::read(pid))
            .collect();
        for (pid, ports) in procfs::listening_ports(&selected) {
            if let Some(&id) = self.by_pid.get(&pid) {
                for port in ports {
                    sel.add_listener(port, id)?;
                }
            }
        }
        Ok(())
    }

    fn classify(&self, p: &ProcInfo, listening: &[u16]) -> Option<(String, Rule)> {
        if p.pid == self.own_pid {
            return None;
        }
        if let Some(hit) = classify::by_config(p, &self.opts.rules, listening) {
            return Some(hit);
        }
        if !self.opts.discovery.auto {
            return None;
        }
        if p.is_kernel_thread() {
            return self
                .opts
                .discovery
                .kernel_threads
                .then(|| ("kernel".to_owned(), Rule::WellKnown("kernel threads")));
        }
        classify::auto(p)
    }

    /// Handles one lifecycle event from the kernel.
    pub fn on_event(
        &mut self,
        event: &ProcEvent,
        sel: &mut dyn Selector,
    ) -> Result<(), ProbeError> {
        let service = event.service as u16;
        match event.kind {
            proc_event::EXIT => {
                if let Some(id) = self.by_pid.remove(&event.pid)
                    && let Some(s) = self.service_mut(id)
                {
                    s.live.remove(&event.pid);
                }
            }
            proc_event::FORK if service != NO_SERVICE => self.note(event.pid, service),
            proc_event::EXEC if self.opts.selection == Selection::Discover => {
                // Name the new program. A strong rule (config, unit, container, well-known
                // server) always applies. Otherwise a child that execs a different program
                // leaves a service that was only "processes of that executable" for its own
                // executable's group, and stays in a strongly named one (a unit's or a
                // server's helpers are that service's work).
                let Some(p) = procfs::read(event.pid) else {
                    return Ok(());
                };
                let inherited_weak = self.service(service).is_none_or(|s| !s.rule.is_strong());
                match self.classify(&p, &[]) {
                    Some((name, rule)) if rule.is_strong() || inherited_weak => {
                        if let Ok(id) = self.service_id(&name, rule) {
                            self.assign(event.pid, id, sel)?;
                        }
                    }
                    _ if service != NO_SERVICE => self.note(event.pid, service),
                    _ => {}
                }
            }
            proc_event::EXEC if service != NO_SERVICE => self.note(event.pid, service),
            proc_event::LISTEN => {
                let Some(p) = procfs::read(event.pid) else {
                    return Ok(());
                };
                let port = event.parent_pid as u16;
                if let Some((name, rule)) = classify::by_config(&p, &self.opts.rules, &[port])
                    && let Ok(id) = self.service_id(&name, rule)
                {
                    self.assign(event.pid, id, sel)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts a new window: its process lists begin with the processes alive now.
    pub fn next_window(&mut self) {
        for s in &mut self.services {
            s.window = s.live.clone();
        }
    }

    fn service_mut(&mut self, id: u16) -> Option<&mut Service> {
        self.services.get_mut(usize::from(id).checked_sub(1)?)
    }

    /// The id of the service named `name`, created by `rule` if it does not exist yet.
    fn service_id(&mut self, name: &str, rule: Rule) -> Result<u16, DiscoveryError> {
        if let Some(&id) = self.by_name.get(name) {
            return Ok(id);
        }
        if self.services.len() >= self.opts.max_services {
            self.services_over_limit += 1;
            return Err(DiscoveryError::TooManyServices {
                limit: self.opts.max_services,
            });
        }
        let id = u16::try_from(self.services.len() + 1).map_err(|_| {
            DiscoveryError::TooManyServices {
                limit: self.opts.max_services,
            }
        })?;
        self.services.push(Service {
            id,
            name: name.to_owned(),
            rule,
            live: BTreeSet::new(),
            window: BTreeSet::new(),
        });
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    fn assign(&mut self, pid: u32, id: u16, sel: &mut dyn Selector) -> Result<(), ProbeError> {
        sel.set_service(pid, id)?;
        if let Some(old) = self.by_pid.get(&pid).copied()
            && old != id
            && let Some(s) = self.service_mut(old)
        {
            s.live.remove(&pid);
        }
        self.note(pid, id);
        Ok(())
    }

    fn note(&mut self, pid: u32, id: u16) {
        self.by_pid.insert(pid, id);
        if let Some(s) = self.service_mut(id) {
            s.live.insert(pid);
            s.window.insert(pid);
        }
    }
}

/// Failures of [`Registry::start`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn discovery_names_this_test_process_tree_without_the_kernel() {
        let mut r = Registry::new(Options {
            selection: Selection::Discover,
            rules: Config::default().compiled_rules(),
            discovery: Discovery::default(),
            max_services: 1000,
        });
        assert!(r.start(&mut DryRun).is_ok());
        // This test process is the "agent" here and is excluded; everything else is somewhere.
        assert!(!r.by_pid.contains_key(&std::process::id()));
        assert!(!r.services.is_empty());
        assert!(r.services.iter().all(|s| s.name != "kernel"));
    }

    #[test]
    fn the_service_cap_is_counted() {
        let mut r = Registry::new(Options {
            selection: Selection::Discover,
            rules: Vec::new(),
            discovery: Discovery::default(),
            max_services: 1,
        });
        assert!(r.start(&mut DryRun).is_ok());
        assert_eq!(r.services.len(), 1);
        assert!(r.services_over_limit > 0);
    }
}
