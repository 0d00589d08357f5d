//! Services: which processes are profiled, under which name.
//!
//! A service is a named set of processes with a small id the kernel knows it by. The initial
//! set comes from one read of `/proc`; after that the kernel follows forks (children inherit)
//! and exec rules itself, and sends rare lifecycle events that this module uses to name and
//! list processes. No `/proc` polling loop.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

use agent_ebpf::{NO_SERVICE, ProcEvent, proc_event};

use crate::{
    error::{DiscoveryError, ProbeError},
    probes::Probes,
};

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every user process, grouped by executable.
    Auto,
    /// Only the named processes.
    Explicit { comms: Vec<String>, pids: Vec<u32> },
}

/// How a service's processes were chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Processes whose comm equals this, including those that exec later.
    Comm(String),
    /// This process, its threads and its descendants.
    Pid(u32),
    /// Processes running this executable (auto-discovery).
    Executable(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Service {
    pub id: u16,
    pub name: String,
    pub rule: Rule,
    /// Processes alive in the service now.
    pub live: BTreeSet<u32>,
    /// Processes seen in the service during the current window.
    pub window: BTreeSet<u32>,
}

/// One process as read from `/proc`.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<PathBuf>,
}

impl ProcInfo {
    /// Kernel threads have no executable and descend from kthreadd (pid 2).
    pub fn is_kernel_thread(&self) -> bool {
        self.pid == 2 || self.ppid == 2 || (self.exe.is_none() && self.ppid == 0 && self.pid != 1)
    }
}

/// The services and their processes.
#[derive(Debug)]
pub struct Registry {
    selection: Selection,
    services: Vec<Service>,
    by_pid: HashMap<u32, u16>,
    max_services: usize,
    /// Services that could not be created because `max_services` was reached.
    pub services_over_limit: u64,
    own_pid: u32,
}

impl Registry {
    pub fn new(selection: Selection, max_services: usize) -> Self {
        Self {
            selection,
            services: Vec::new(),
            by_pid: HashMap::new(),
            max_services: max_services.min(usize::from(u16::MAX) - 1),
            services_over_limit: 0,
            own_pid: std::process::id(),
        }
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, id: u16) -> Option<&Service> {
        self.services.get(usize::from(id).checked_sub(1)?)
    }

    /// Resolves the selection against `/proc` and tells the kernel. Rules that must catch later
    /// processes are installed before the scan, so nothing starting meanwhile is missed.
    pub fn start(&mut self, probes: &mut Probes) -> Result<(), StartError> {
        let selection = self.selection.clone();
        if let Selection::Explicit { comms, pids } = &selection {
            for comm in comms {
                if comm.len() > 15 {
                    return Err(DiscoveryError::CommTooLong(comm.clone()).into());
                }
                let id = self.add_service(comm.clone(), Rule::Comm(comm.clone()))?;
                probes.add_comm_rule(comm, id)?;
            }
            for &pid in pids {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(DiscoveryError::NoSuchPid(pid).into());
                }
            }
        }
        let procs = scan_proc();
        match &selection {
            Selection::Auto => {
                let own_pid = self.own_pid;
                for p in procs.iter().filter(|p| p.pid != own_pid) {
                    if p.is_kernel_thread() {
                        continue;
                    }
                    if let Some(exe) = &p.exe {
                        self.assign_by_exe(p.pid, exe, probes)?;
                    }
                }
            }
            Selection::Explicit { comms, pids } => {
                for p in &procs {
                    if let Some(comm) = comms.iter().find(|c| **c == p.comm)
                        && let Some(id) = self.id_by_name(comm)
                    {
                        self.assign(p.pid, id, probes)?;
                    }
                }
                for &pid in pids {
                    let comm = read_comm(pid).ok_or(DiscoveryError::NoSuchPid(pid))?;
                    let id = self.add_service(comm, Rule::Pid(pid))?;
                    for member in descendants(&procs, pid) {
                        self.assign(member, id, probes)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles one lifecycle event from the kernel.
    pub fn on_event(&mut self, event: &ProcEvent, probes: &mut Probes) -> Result<(), ProbeError> {
        let service = event.service as u16;
        match event.kind {
            proc_event::FORK | proc_event::EXEC if service != NO_SERVICE => {
                self.note(event.pid, service);
            }
            proc_event::EXEC if self.selection == Selection::Auto => {
                if event.pid != self.own_pid
                    && let Ok(exe) = fs::read_link(format!("/proc/{}/exe", event.pid))
                {
                    // A full registry is counted in `services_over_limit`, not an error here.
                    let _ = self.assign_by_exe(event.pid, &exe, probes);
                }
            }
            proc_event::EXIT => {
                if let Some(id) = self.by_pid.remove(&event.pid)
                    && let Some(s) = self.service_mut(id)
                {
                    s.live.remove(&event.pid);
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

    fn id_by_name(&self, name: &str) -> Option<u16> {
        self.services.iter().find(|s| s.name == name).map(|s| s.id)
    }

    fn service_mut(&mut self, id: u16) -> Option<&mut Service> {
        self.services.get_mut(usize::from(id).checked_sub(1)?)
    }

    fn add_service(&mut self, name: String, rule: Rule) -> Result<u16, DiscoveryError> {
        if self.services.len() >= self.max_services {
            self.services_over_limit += 1;
            return Err(DiscoveryError::TooManyServices {
                limit: self.max_services,
            });
        }
        let id = u16::try_from(self.services.len() + 1).map_err(|_| {
            DiscoveryError::TooManyServices {
                limit: self.max_services,
            }
        })?;
        self.services.push(Service {
            id,
            name,
            rule,
            live: BTreeSet::new(),
            window: BTreeSet::new(),
        });
        Ok(id)
    }

    fn assign_by_exe(
        &mut self,
        pid: u32,
        exe: &Path,
        probes: &mut Probes,
    ) -> Result<(), StartError> {
        let exe = clean_exe(exe);
        let id = match self
            .services
            .iter()
            .find(|s| s.rule == Rule::Executable(exe.clone()))
        {
            Some(s) => s.id,
            None => {
                let name = service_name_for(&exe, &self.services);
                self.add_service(name, Rule::Executable(exe))?
            }
        };
        self.assign(pid, id, probes)?;
        Ok(())
    }

    fn assign(&mut self, pid: u32, id: u16, probes: &mut Probes) -> Result<(), ProbeError> {
        probes.set_service(pid, id)?;
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

/// `/proc/PID/exe` of a replaced binary ends in " (deleted)"; the service is the same.
fn clean_exe(exe: &Path) -> PathBuf {
    let s = exe.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// The executable's file name, made unique when two executables share it.
fn service_name_for(exe: &Path, existing: &[Service]) -> String {
    let base = exe.file_name().map_or_else(
        || exe.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    if !existing.iter().any(|s| s.name == base) {
        return base;
    }
    exe.to_string_lossy().into_owned()
}

/// Every process in `/proc`, read once. Processes that vanish mid-scan are skipped.
pub fn scan_proc() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<ProcInfo> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain ") "; the fields after the last ')' are fixed.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    Some(ProcInfo {
        pid,
        ppid,
        comm,
        exe,
    })
}

pub fn read_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// `root` and all its descendants among `procs`.
pub fn descendants(procs: &[ProcInfo], root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&pid) = out.get(i) {
        if let Some(kids) = children.get(&pid) {
            out.extend(kids.iter().copied().filter(|k| *k != pid));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            comm: format!("p{pid}"),
            exe: Some(PathBuf::from("/bin/x")),
        }
    }

    #[test]
    fn descendants_walk_the_tree() {
        let procs = [
            proc(1, 0),
            proc(10, 1),
            proc(11, 10),
            proc(12, 11),
            proc(20, 1),
        ];
        assert_eq!(descendants(&procs, 10), vec![10, 11, 12]);
        assert_eq!(descendants(&procs, 20), vec![20]);
    }

    #[test]
    fn kernel_threads_are_recognised() {
        let kthread = ProcInfo {
            pid: 57,
            ppid: 2,
            comm: "kworker/0:1".into(),
            exe: None,
        };
        assert!(kthread.is_kernel_thread());
        assert!(!proc(300, 1).is_kernel_thread());
    }

    #[test]
    fn deleted_executables_keep_their_service() {
        assert_eq!(
            clean_exe(Path::new("/usr/sbin/nginx (deleted)")),
            PathBuf::from("/usr/sbin/nginx")
        );
    }

    #[test]
    fn our_own_proc_entry_parses() {
        let me = read_proc(std::process::id());
        assert!(me.is_some_and(|p| p.ppid > 0));
    }
}
