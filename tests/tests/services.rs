//! Service discovery: real CRM servers, systemd-style cgroups, config rules, fork storms and
//! bad configs.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{
    Agent, Scratch, Workload, crmprof, parse_profile, privileged, servers, service, tag,
};
use serde_json::Value;

fn services_json(args: &[&str]) -> Value {
    let out = Command::new(crmprof())
        .arg("services")
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("running crmprof services");
    assert!(
        out.status.success(),
        "crmprof services failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("services JSON")
}

fn pids_of(services: &Value, name: &str) -> Vec<u64> {
    services["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .and_then(|s| s["processes"].as_array())
        .map(|p| p.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn real_nginx_postgres_and_redis_are_one_service_each() {
    if !privileged("real_nginx_postgres_and_redis_are_one_service_each") {
        return;
    }
    let scratch = Scratch::new("servers");
    let nginx = servers::nginx(&scratch.0, 2);
    let postgres = servers::postgres(&scratch.0);
    let redis = servers::redis(&scratch.0);
    let (nginx_port, pg_port, redis_port) = (nginx.port, postgres.port, redis.port);

    let agent = Agent::start(&["profile", "--duration", "120s"]);
    // Load: HTTP requests, five concurrent PostgreSQL clients, Redis PINGs.
    let psql = servers::postgres_bin("psql");
    let clients: Vec<Child> = (0..5)
        .map(|_| {
            Command::new(&psql)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg_port.to_string(),
                    "-U",
                    "postgres",
                    "-c",
                ])
                .arg("select pg_sleep(1), count(*) from pg_class")
                .stdout(Stdio::null())
                .spawn()
                .expect("starting psql")
        })
        .collect();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", nginx_port)).expect("nginx");
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        assert!(body.contains("200"), "{body}");
    }
    let mut r = TcpStream::connect(("127.0.0.1", redis_port)).expect("redis");
    for _ in 0..200 {
        r.write_all(b"PING\r\n").expect("PING");
        let mut pong = [0u8; 7];
        r.read_exact(&mut pong).expect("PONG");
    }
    for mut c in clients {
        assert!(c.wait().expect("psql").success(), "a psql client failed");
    }
    let doc = parse_profile(&agent.interrupt_and_output());
    let names: Vec<&str> = doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for (name, min_pids) in [("nginx", 3), ("postgres", 6), ("redis-server", 1)] {
        assert_eq!(
            names.iter().filter(|n| n.starts_with(name)).count(),
            1,
            "exactly one {name} service in {names:?}"
        );
        let s = service(&doc, name).expect("the service");
        let pids = s["pids"].as_array().map_or(0, Vec::len);
        assert!(
            pids >= min_pids,
            "{name}: {pids} pids, expected ≥ {min_pids}"
        );
        assert!(
            !s["syscalls"].as_array().is_some_and(Vec::is_empty),
            "{name} has no syscalls"
        );
        assert!(
            s["network"]["rx_bytes"].as_u64().unwrap_or(0) > 0,
            "{name} received nothing: {:#}",
            s["network"]
        );
        assert!(s["bottleneck"]["class"].is_string());
    }
}

#[test]
fn a_systemd_style_cgroup_names_the_service() {
    if !privileged("a_systemd_style_cgroup_names_the_service") {
        return;
    }
    let root = [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .find(|r| Path::new(r).join("cgroup.procs").exists())
    .expect("a cgroup hierarchy to create a unit cgroup in");
    let unit = tag("crm-api-");
    let cgroup = format!("{root}/system.slice/{unit}.service");
    std::fs::create_dir_all(&cgroup).expect("creating the unit cgroup");
    let scratch = Scratch::new("unit");
    let mut w = Workload::start(&scratch, "api-worker", true, &["sleep", "1", "1000"]);
    std::fs::write(format!("{cgroup}/cgroup.procs"), w.pid().to_string()).expect("joining");
    let services = services_json(&[]);
    let pids = pids_of(&services, &unit);
    w.release();
    w.wait_success();
    let _ = std::fs::remove_dir(&cgroup);
    assert!(
        pids.contains(&u64::from(w.pid())),
        "{unit} does not hold {}: {services:#}",
        w.pid()
    );
}

#[test]
fn config_rules_select_by_port_and_cmdline() {
    if !privileged("config_rules_select_by_port_and_cmdline") {
        return;
    }
    let scratch = Scratch::new("rules");
    let port = servers::free_port();
    let config = scratch.0.join("crmprof.toml");
    std::fs::write(
        &config,
        format!(
            "[discovery]\nauto = false\n\n[[service]]\nname = \"by-port\"\nport = {port}\n\n\
             [[service]]\nname = \"by-cmdline\"\ncmdline = \"sleep 7777 [0-9]+$\"\n"
        ),
    )
    .expect("writing the config");
    let config = config.to_str().expect("UTF-8");
    // Already running when discovery reads /proc.
    let mut early = Workload::start(&scratch, "early-sleeper", true, &["sleep", "7777", "1000"]);
    let listed = services_json(&["--config", config]);
    assert!(
        pids_of(&listed, "by-cmdline").contains(&u64::from(early.pid())),
        "{listed:#}"
    );
    assert_eq!(
        listed["services"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );

    // Listening only after the agent started: the kernel reports the listen.
    let agent = Agent::start(&["profile", "--duration", "60s", "--config", config]);
    let mut sink = Workload::start(
        &scratch,
        "late-sink",
        false,
        &["tcp-sink", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(sink.read_line(), port.to_string());
    std::thread::sleep(Duration::from_millis(600));
    let mut source = Workload::start(
        &scratch,
        "feeder",
        false,
        &["tcp-source", &format!("127.0.0.1:{port}"), "1000000"],
    );
    source.wait_success();
    let _ = sink.read_line();
    sink.wait_success();
    early.release();
    early.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let by_port = service(&doc, "by-port").expect("by-port service");
    assert!(
        by_port["pids"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == sink.pid())),
        "{by_port:#}"
    );
    let rx = by_port["network"]["rx_bytes"].as_u64().unwrap_or(0);
    assert!(rx >= 1_000_000, "by-port received {rx} of 1000000 bytes");
    assert!(
        service(&doc, "feeder").is_none(),
        "auto = false selects nothing else"
    );
}

#[test]
fn a_fork_storm_stays_in_its_service_and_leaks_nothing() {
    if !privileged("a_fork_storm_stays_in_its_service_and_leaks_nothing") {
        return;
    }
    const CHILDREN: u64 = 10_000;
    let scratch = Scratch::new("storm");
    let name = tag("stm");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    Workload::start(
        &scratch,
        &name,
        false,
        &["fork-storm", &CHILDREN.to_string()],
    )
    .wait_success();
    std::thread::sleep(Duration::from_millis(600));
    let doc = parse_profile(&agent.interrupt_and_output());
    let tracking = &doc["agent"]["tracking"];
    let dropped = &doc["agent"]["dropped"];
    assert_eq!(tracking["forks_inherited"], CHILDREN, "{tracking:#}");
    assert_eq!(dropped["proc_events_ring_full"], 0, "{dropped:#}");
    assert_eq!(dropped["pid_above_pid_max"], 0, "{dropped:#}");
    let s = service(&doc, &name).expect("the storm's service");
    let pids = s["pids"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(pids, CHILDREN + 1, "every child was in the service");
    // Everything exited: the kernel's tracking is back to where it started (nothing selected).
    assert_eq!(tracking["processes_tracked"], 0, "{tracking:#}");
    assert_eq!(tracking["threads_tracked"], 0, "{tracking:#}");
}

#[test]
fn bad_configs_name_the_file_and_line() {
    let scratch = Scratch::new("badcfg");
    for (text, expect_line, expect) in [
        ("interval = \"10s\"\n[discovery\n", 2, "unclosed table"),
        (
            "interval = \"10s\"\nmax_services = 5\nbogus_key = 1\n",
            3,
            "bogus_key",
        ),
        (
            "[[service]]\nname = \"api\"\ncmdline = \"([a-z\"\n",
            3,
            "does not compile",
        ),
    ] {
        let file = scratch.0.join("bad.toml");
        std::fs::write(&file, text).expect("writing the config");
        for args in [vec!["config", "check"], vec!["services", "--config"]] {
            let out = Command::new(crmprof())
                .args(&args)
                .arg(&file)
                .output()
                .expect("running crmprof");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {text:?}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            let at = format!("{}:{expect_line}:", file.display());
            assert!(
                stderr.contains(&at),
                "{args:?}: {stderr} does not name {at}"
            );
            assert!(
                stderr.contains(expect),
                "{args:?}: {stderr} does not say {expect}"
            );
            assert!(!stderr.contains("panicked"));
        }
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crmprof.toml");
    let out = Command::new(crmprof())
        .args(["config", "check"])
        .arg(&example)
        .output()
        .expect("running crmprof config check");
    assert!(
        out.status.success(),
        "deploy/crmprof.toml is not valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
