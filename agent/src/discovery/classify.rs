//! Naming: which service a process belongs to, in the order the issue of record sets —
//! explicit config rules, systemd units, containers, well-known servers, then the executable.

use std::path::{Path, PathBuf};

use super::procfs::ProcInfo;
use crate::config::CompiledRule;

/// Why a process is in its service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `[[service]]` rule number N (0-based) of the config.
    Config(usize),
    /// A systemd unit: a cgroup path ending in `NAME.service`.
    SystemdUnit(String),
    /// A container id from the cgroup path.
    Container(String),
    /// A recognised server or application runtime.
    WellKnown(&'static str),
    /// Processes running this executable.
    Executable(PathBuf),
    /// `--comm NAME`: processes whose comm equals this, including later ones.
    Comm(String),
    /// `--pid PID`: this process, its threads and children.
    Pid(u32),
}

impl Rule {
    /// How the rule reads in `crmprof services`.
    pub fn describe(&self) -> String {
        match self {
            Rule::Config(i) => format!("config [[service]] #{}", i + 1),
            Rule::SystemdUnit(u) => format!("systemd unit {u}"),
            Rule::Container(id) => format!("container {id}"),
            Rule::WellKnown(what) => format!("well-known {what}"),
            Rule::Executable(p) => format!("executable {}", p.display()),
            Rule::Comm(c) => format!("comm {c}"),
            Rule::Pid(p) => format!("pid {p} and its children"),
        }
    }

    /// Rules that name a process whatever its parent was (a child that execs into a unit's or
    /// a configured service joins it; one that execs a plain binary stays with its parent).
    pub fn is_strong(&self) -> bool {
        !matches!(self, Rule::Executable(_))
    }
}

/// The first config rule that matches.
pub fn by_config(p: &ProcInfo, rules: &[CompiledRule], ports: &[u16]) -> Option<(String, Rule)> {
    rules.iter().enumerate().find_map(|(i, r)| {
        let ok = r.comm.as_ref().is_none_or(|c| *c == p.comm)
            && r.exe
                .as_ref()
                .is_none_or(|e| p.exe.as_deref() == Some(e.as_path()))
            && r.cmdline
                .as_ref()
                .is_none_or(|re| re.is_match(&p.cmdline.join(" ")))
            && r.port.is_none_or(|port| ports.contains(&port))
            && r.uid.is_none_or(|uid| uid == p.uid)
            && r.cgroup
                .as_ref()
                .is_none_or(|re| p.cgroups.iter().any(|c| re.is_match(c)));
        ok.then(|| (r.name.clone(), Rule::Config(i)))
    })
}

/// Automatic naming: systemd unit, container, well-known server, executable.
pub fn auto(p: &ProcInfo) -> Option<(String, Rule)> {
    if let Some(unit) = systemd_unit(&p.cgroups) {
        let name = unit.trim_end_matches(".service").to_owned();
        return Some((name, Rule::SystemdUnit(unit)));
    }
    if let Some(id) = container_id(&p.cgroups) {
        let name = container_name(&id).unwrap_or_else(|| format!("container-{}", &id[..12]));
        return Some((name, Rule::Container(id)));
    }
    if let Some((name, what)) = well_known(p) {
        return Some((name, Rule::WellKnown(what)));
    }
    let exe = p.exe.as_deref().map(clean_exe)?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    Some((name, Rule::Executable(exe)))
}

/// The innermost `NAME.service` segment of any cgroup path, skipping systemd's own per-user
/// manager units.
pub fn systemd_unit(cgroups: &[String]) -> Option<String> {
    cgroups.iter().find_map(|path| {
        path.split('/')
            .rev()
            .find(|seg| seg.ends_with(".service") && !seg.starts_with("user@"))
            .map(str::to_owned)
    })
}

/// A 64-hex-digit container id in a cgroup path (docker, containerd, CRI-O, podman layouts).
pub fn container_id(cgroups: &[String]) -> Option<String> {
    cgroups.iter().find_map(|path| {
        path.split('/').find_map(|seg| {
            let seg = seg.strip_suffix(".scope").unwrap_or(seg);
            let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        })
    })
}

/// The container's name from the runtime's metadata, where readable (Docker keeps it in
/// `config.v2.json`).
fn container_name(id: &str) -> Option<String> {
    let path = format!("/var/lib/docker/containers/{id}/config.v2.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["Name"]
        .as_str()
        .map(|n| n.trim_start_matches('/').to_owned())
}

/// Servers and runtimes a CRM stack is made of. Forking servers (PostgreSQL backends, nginx
/// workers, php-fpm children) share their executable, so they land in one service.
fn well_known(p: &ProcInfo) -> Option<(String, &'static str)> {
    let exe = p.exe.as_deref().map(clean_exe)?;
    let base = exe.file_name()?.to_string_lossy().into_owned();
    // Some servers are one binary under several names (Debian's redis-server is a link to
    // redis-check-rdb, which looks at argv[0]): look at the executable, argv[0] and comm.
    let argv0 = p
        .cmdline
        .first()
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let server = [base.as_str(), argv0.as_str(), p.comm.as_str()]
        .into_iter()
        .find_map(|n| match n {
            "nginx" => Some("nginx"),
            "haproxy" => Some("haproxy"),
            "apache2" | "httpd" => Some("apache"),
            "postgres" | "postmaster" => Some("postgres"),
            "mysqld" | "mariadbd" => Some("mysql"),
            "redis-server" => Some("redis-server"),
            "memcached" => Some("memcached"),
            _ => None,
        });
    if let Some(name) = server {
        return Some((name.to_owned(), "server"));
    }
    if base.starts_with("php-fpm") {
        return Some(("php-fpm".to_owned(), "php-fpm"));
    }
    let runtime = if base == "java" {
        "java"
    } else if base == "node" || base == "nodejs" {
        "node"
    } else if base.starts_with("python") {
        "python"
    } else if base.starts_with("ruby") {
        "ruby"
    } else {
        return None;
    };
    Some((
        app_name(runtime, &p.cmdline).unwrap_or_else(|| runtime.to_owned()),
        runtime,
    ))
}

/// An application server's name from its command line: the jar or main class for Java, the
/// script or module for Node, Python and Ruby.
pub fn app_name(runtime: &str, cmdline: &[String]) -> Option<String> {
    let args = cmdline.get(1..)?;
    let stem = |s: &str| {
        Path::new(s)
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
    };
    match runtime {
        "java" => {
            if let Some(i) = args.iter().position(|a| a == "-jar") {
                return args.get(i + 1).and_then(|j| stem(j));
            }
            // The main class: the first argument that is not an option or an option's value.
            let mut skip = false;
            for a in args {
                if skip {
                    skip = false;
                    continue;
                }
                if a == "-cp" || a == "-classpath" || a == "--class-path" {
                    skip = true;
                    continue;
                }
                if !a.starts_with('-') {
                    return a.rsplit('.').next().map(str::to_owned);
                }
            }
            None
        }
        "python" => {
            if let Some(i) = args.iter().position(|a| a == "-m") {
                return args.get(i + 1).cloned();
            }
            let script = args.iter().find(|a| !a.starts_with('-'))?;
            stem(script)
        }
        _ => {
            let script = args.iter().find(|a| !a.starts_with('-'))?;
            stem(script)
        }
    }
}

/// `/proc/PID/exe` of a replaced binary ends in " (deleted)"; the service is the same.
pub fn clean_exe(exe: &Path) -> PathBuf {
    let s = exe.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_with(exe: &str, cmdline: &[&str], cgroups: &[&str]) -> ProcInfo {
        ProcInfo {
            pid: 100,
            ppid: 1,
            comm: Path::new(exe)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            exe: Some(PathBuf::from(exe)),
            cmdline: cmdline.iter().map(|s| (*s).to_owned()).collect(),
            uid: 0,
            cgroups: cgroups.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn systemd_units_are_found_in_v1_and_v2_paths() {
        assert_eq!(
            systemd_unit(&["/system.slice/crm-api.service".into()]),
            Some("crm-api.service".into())
        );
        assert_eq!(
            systemd_unit(&[
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service".into()
            ]),
            Some("x.service".into())
        );
        assert_eq!(
            systemd_unit(&["/user.slice/user@1000.service/init.scope".into()]),
            None
        );
        let p = proc_with(
            "/usr/bin/python3",
            &["python3", "app.py"],
            &["/system.slice/crm-api.service"],
        );
        assert_eq!(auto(&p).map(|a| a.0), Some("crm-api".into()));
    }

    #[test]
    fn containers_are_found() {
        let id = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/besteffort/pod1/cri-containerd-{id}.scope"),
            format!("/kubepods.slice/crio-{id}.scope"),
        ] {
            assert_eq!(
                container_id(std::slice::from_ref(&path)),
                Some(id.to_owned()),
                "{path}"
            );
        }
        let p = proc_with("/usr/sbin/nginx", &["nginx"], &[&format!("/docker/{id}")]);
        assert_eq!(auto(&p).map(|a| a.0), Some("container-4f1e2d3c4b5a".into()));
    }

    #[test]
    fn well_known_servers_and_app_runtimes_are_named() {
        let name = |exe: &str, cmd: &[&str]| auto(&proc_with(exe, cmd, &["/"])).map(|a| a.0);
        assert_eq!(
            name("/usr/sbin/nginx", &["nginx: worker process"]),
            Some("nginx".into())
        );
        assert_eq!(
            name(
                "/usr/lib/postgresql/15/bin/postgres",
                &["postgres: crm crm [local] idle"]
            ),
            Some("postgres".into())
        );
        assert_eq!(
            name("/usr/bin/redis-server", &["redis-server *:6379"]),
            Some("redis-server".into())
        );
        assert_eq!(
            name("/usr/sbin/mariadbd", &["mariadbd"]),
            Some("mysql".into())
        );
        assert_eq!(
            name("/usr/sbin/php-fpm8.2", &["php-fpm: pool www"]),
            Some("php-fpm".into())
        );
        assert_eq!(
            name(
                "/usr/lib/jvm/bin/java",
                &["java", "-Xmx1g", "-jar", "/opt/crm/crm-server.jar"]
            ),
            Some("crm-server".into())
        );
        assert_eq!(
            name(
                "/usr/bin/java",
                &["java", "-cp", "a.jar:b.jar", "com.acme.crm.Main"]
            ),
            Some("Main".into())
        );
        assert_eq!(
            name(
                "/usr/bin/node",
                &["node", "--max-old-space-size=512", "server.js"]
            ),
            Some("server".into())
        );
        assert_eq!(
            name("/usr/bin/python3.11", &["python3", "-m", "gunicorn"]),
            Some("gunicorn".into())
        );
        assert_eq!(
            name("/usr/bin/ruby3.1", &["ruby", "/srv/app/bin/puma"]),
            Some("puma".into())
        );
        assert_eq!(
            name("/usr/local/bin/crm-sync", &["crm-sync"]),
            Some("crm-sync".into())
        );
    }
}
