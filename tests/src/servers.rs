//! Real CRM servers on loopback for the tests: nginx, PostgreSQL and Redis from the Debian
//! packages (.ci/run installs them), each in a scratch directory on a free port.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::sh;

/// A server process, stopped (SIGTERM) and reaped on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on {port} within 30 s");
}

/// Where the Debian packages put the servers ([`postgres_bin`] finds PostgreSQL's tools).
pub const NGINX: &str = "/usr/sbin/nginx";
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Where PostgreSQL's major versions keep their tools, each in `VERSION/bin`.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";

/// A PostgreSQL tool from the newest installed major version that has it, if any.
pub fn find_postgres_bin(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(POSTGRES_LIB)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// [`find_postgres_bin`], for tests: a missing tool fails them with what to install.
pub fn postgres_bin(tool: &str) -> PathBuf {
    find_postgres_bin(tool).unwrap_or_else(|| {
        panic!("no PostgreSQL {tool} under {POSTGRES_LIB} (.ci/run installs it)")
    })
}

/// What [`nginx`], [`postgres`], [`redis`] and the load generators that drive them (`wrk`,
/// `redis-benchmark`, `pgbench`) need that this host lacks, by name.
pub fn missing() -> Vec<&'static str> {
    [
        ("nginx", Path::new(NGINX).is_file()),
        ("redis-server", Path::new(REDIS_SERVER).is_file()),
        ("redis-benchmark", crate::on_path("redis-benchmark")),
        ("wrk", crate::on_path("wrk")),
        ("runuser", crate::on_path("runuser")),
        ("postgres", find_postgres_bin("postgres").is_some()),
        ("initdb", find_postgres_bin("initdb").is_some()),
        ("pgbench", find_postgres_bin("pgbench").is_some()),
    ]
    .into_iter()
    .filter_map(|(tool, here)| (!here).then_some(tool))
    .collect()
}

/// nginx with `workers` worker processes answering "ok" on `/`.
pub fn nginx(dir: &Path, workers: u32) -> Server {
    nginx_with(dir, workers, "return 200 \"ok\\n\";")
}

/// nginx with `workers` worker processes serving `page` as `/` (a static file, by sendfile).
pub fn nginx_serving(dir: &Path, workers: u32, page: &[u8]) -> Server {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).expect("creating the web root");
    std::fs::write(root.join("index.html"), page).expect("writing index.html");
    nginx_with(dir, workers, &format!("root {};", root.display()))
}

fn nginx_with(dir: &Path, workers: u32, location: &str) -> Server {
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
             events {{ worker_connections 512; }}\n\
             http {{ access_log off; sendfile on; client_body_temp_path {d}; \
             proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; \
             scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }} }}\n",
            d = dir.display()
        ),
    )
    .expect("writing nginx.conf");
    let child = Command::new(NGINX)
        .args(["-c", conf.to_str().expect("UTF-8"), "-g", "daemon off;"])
        .spawn()
        .expect("starting nginx (apt-get install nginx)");
    wait_for_port(port, "nginx");
    Server { child, port }
}

/// PostgreSQL as the postgres user, in a fresh cluster under `dir` (which must be traversable
/// by that user), trusting local connections.
pub fn postgres(dir: &Path) -> Server {
    let port = free_port();
    let data = dir.join("pg");
    sh(&format!(
        "chmod 755 {dir} && install -d -o postgres -m 700 {data} && \
         runuser -u postgres -- {initdb} -D {data} -A trust -U postgres >/dev/null",
        dir = dir.display(),
        data = data.display(),
        initdb = postgres_bin("initdb").display()
    ));
    let data = data.to_str().expect("UTF-8");
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(postgres_bin("postgres"))
        .args(["-D", data, "-p", &port.to_string(), "-k", data])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting postgres");
    wait_for_port(port, "postgres");
    Server { child, port }
}

/// Redis without persistence.
pub fn redis(dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new(REDIS_SERVER)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir", dir.to_str().expect("UTF-8")])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server (apt-get install redis-server)");
    wait_for_port(port, "redis");
    Server { child, port }
}
