//! What `/proc` says about a process: read once at start-up and at exec, never polled.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::PathBuf,
};

/// One process as read from `/proc`.
#[derive(Clone, Debug, Default)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<PathBuf>,
    pub cmdline: Vec<String>,
    pub uid: u32,
    /// The cgroup paths of every hierarchy (v1 and v2).
    pub cgroups: Vec<String>,
}

impl ProcInfo {
    /// Kernel threads have no executable and descend from kthreadd (pid 2).
    pub fn is_kernel_thread(&self) -> bool {
        self.pid == 2 || self.ppid == 2 || (self.exe.is_none() && self.cmdline.is_empty())
    }
}

/// Every process in `/proc`, read once. Processes that vanish mid-scan are skipped.
pub fn scan() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<ProcInfo> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

pub fn read(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain ") "; the fields after the last ')' are fixed.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid,
        comm,
        exe,
        cmdline,
        uid,
        cgroups,
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

/// Listening TCP ports by process: /proc/net/tcp{,6} sockets in LISTEN, matched to processes
/// through their fds. Costs a walk of every process's fds, so it is done only when a rule
/// selects by port.
pub fn listening_ports(procs: &[ProcInfo]) -> HashMap<u32, Vec<u16>> {
    let mut by_inode: HashMap<u64, u16> = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (index 9)
            if f.get(3) != Some(&"0A") {
                continue;
            }
            let port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode = f.get(9).and_then(|i| i.parse().ok());
            if let (Some(port), Some(inode)) = (port, inode) {
                by_inode.insert(inode, port);
            }
        }
    }
    let mut out: HashMap<u32, Vec<u16>> = HashMap::new();
    if by_inode.is_empty() {
        return out;
    }
    for p in procs {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", p.pid)) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                && let Some(&port) = by_inode.get(&inode)
            {
                out.entry(p.pid).or_default().push(port);
            }
        }
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
            cmdline: vec!["x".into()],
            ..ProcInfo::default()
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
            ..ProcInfo::default()
        };
        assert!(kthread.is_kernel_thread());
        assert!(!proc(300, 1).is_kernel_thread());
    }

    #[test]
    fn our_own_proc_entry_parses() {
        let me = read(std::process::id());
        assert!(
            me.as_ref()
                .is_some_and(|p| p.ppid > 0 && !p.cmdline.is_empty())
        );
        assert!(me.is_some_and(|p| !p.cgroups.is_empty()));
    }

    #[test]
    fn a_listening_socket_is_found() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let me = read(std::process::id()).into_iter().collect::<Vec<_>>();
        let ports = listening_ports(&me);
        assert!(
            ports
                .get(&std::process::id())
                .is_some_and(|p| p.contains(&addr.port())),
            "{ports:?}"
        );
    }
}
