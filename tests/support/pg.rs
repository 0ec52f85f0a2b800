//! A throwaway PostgreSQL cluster for the tests of one test process (design §7, "Tests"):
//! `initdb` and `pg_ctl` from the installed server binaries, in a temporary directory,
//! listening only on a Unix socket there. Each test gets a database of its own; no test
//! touches a database it did not create.
//!
//! The cluster is started on first use and stopped by a watchdog once the process that started
//! it is gone (a test process never returns from `main` through our code, so nothing else
//! could stop it), which also removes its directory. Root (CI) cannot run PostgreSQL: the
//! server then runs as the `postgres` user the Debian package creates.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Cluster {
    socket_dir: PathBuf,
    port: u16,
}

/// The directory holding `initdb` and `pg_ctl`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/N/bin`, else the one `pg_config --bindir` names.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().parse().ok()?;
            Some((n, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(o) if o.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => panic!(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: run scripts/test, \
             which installs the postgresql package, or set PG_BIN to their directory"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command for a server binary, run as `postgres` when this process is root.
fn server_command(bin: &Path, name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(name));
        c
    } else {
        Command::new(bin.join(name))
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

fn start() -> Cluster {
    // fsync off: a test cluster need not survive a power cut. Every session still commits
    // with synchronous_commit = on, as in production.
    start_with(5432, "-c listen_addresses= -c fsync=off", |_| {})
}

/// A cluster that writes as a production one does (fsync on), listening on a Unix socket
/// only: for the benchmarks.
#[allow(dead_code)]
pub fn start_durable() -> Cluster {
    start_with(5432, "-c listen_addresses=", |_| {})
}

/// A second cluster of this test process that listens on `127.0.0.1:port` too and takes only
/// TLS connections there, with the certificate and key in `cert` and `key` (PEM files): for
/// the tests of `sslmode`.
#[allow(dead_code)]
pub fn start_tls(port: u16, cert: &Path, key: &Path) -> Cluster {
    start_with(
        port,
        &format!("-c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c fsync=off"),
        |data| {
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = data.join(to);
                std::fs::copy(from, &to).expect("copy the server's certificate");
                std::os::unix::fs::chown(&to, owner(), None).expect("chown");
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod");
            }
            // TCP only with TLS (so a connection without it is refused); the socket as before.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("write pg_hba.conf");
        },
    )
}

/// The uid the server runs as (`postgres` when this process is root).
fn owner() -> Option<u32> {
    if !is_root() {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn start_with(port: u16, options: &str, prepare: impl FnOnce(&Path)) -> Cluster {
    let bin = bin_dir();
    assert!(
        bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
        "PostgreSQL's server binaries are not in {}: run scripts/test, which installs the postgresql package",
        bin.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("hookops-pg-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres"]).arg(&dir);
                c
            },
            "chown of the cluster directory",
        );
    }
    let data = dir.join("data");
    let mut init = server_command(&bin, "initdb");
    init.arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(init, "initdb");
    prepare(&data);
    let mut ctl = server_command(&bin, "pg_ctl");
    ctl.arg("-D").arg(&data).arg("-o").arg(format!(
        "-k {} {options} -c max_connections=200",
        dir.display()
    ));
    ctl.arg("-l").arg(dir.join("log")).args(["-w", "start"]);
    run(ctl, "pg_ctl start");
    // The watchdog: once this process is gone, stop the server and remove its directory.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas}{ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runas = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        },
        ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    // Not waited for: it outlives this process on purpose (it is what stops the server).
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster's watchdog");
    Cluster {
        socket_dir: dir,
        port,
    }
}

impl Cluster {
    /// The pid of the cluster's server process (the parent of every session's process).
    #[allow(dead_code)]
    pub fn server_pid(&self) -> u32 {
        std::fs::read_to_string(self.socket_dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .expect("the server's pid file")
    }

    /// The directory of the cluster's Unix socket.
    #[allow(dead_code)]
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&port={}&user=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// A new empty database for one test; its URL.
    pub fn database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        self.url(&name)
    }
}
