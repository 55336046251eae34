//! A throwaway PostgreSQL cluster started from the locally installed server
//! binaries, for `okr-exporter demo` and the test suite.
//!
//! ```no_run
//! let pg = okr_exporter::embedded_pg::EmbeddedPostgres::start()?;
//! println!("connect to {}", pg.url("postgres"));
//! // the cluster is stopped and its directory removed when `pg` is dropped
//! # Ok::<(), okr_exporter::embedded_pg::EmbeddedPgError>(())
//! ```
//!
//! Nothing is downloaded: `initdb` and `postgres` are looked up on `PATH`
//! (following symlinks such as Debian's `/usr/local/bin/initdb`) and under
//! `/usr/lib/postgresql/*/bin`. `initdb` refuses to run as root, so a root
//! process runs the server as the unprivileged `postgres` system user (or
//! the user named by `OKR_EMBEDDED_PG_USER`).
//!
//! A cluster is stopped when its [`EmbeddedPostgres`] is dropped. A small
//! watchdog process also stops it and removes its directory when the owning
//! process dies without dropping it (a cluster held in a `static`, a panic
//! that aborts, `SIGKILL`), so no cluster outlives its owner.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User, geteuid};

/// Why the embedded cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    /// The PostgreSQL server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or under \
         /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: apt-get install postgresql) \
         or pass --database-url"
    )]
    BinariesNotFound,
    /// Running as root, but no unprivileged user exists to run the server.
    #[error(
        "running as root, but the unprivileged user '{0}' to run PostgreSQL as does not exist; \
         create it or set OKR_EMBEDDED_PG_USER to an existing user"
    )]
    NoUnprivilegedUser(String),
    /// A file-system or process operation failed.
    #[error("embedded PostgreSQL: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `initdb` exited with an error.
    #[error("embedded PostgreSQL: initdb failed: {0}")]
    InitDb(String),
    /// The server did not become ready.
    #[error("embedded PostgreSQL: server did not start: {0}")]
    Start(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedPgError {
    let context = context.into();
    move |source| EmbeddedPgError::Io { context, source }
}

/// A running throwaway PostgreSQL cluster on a loopback port.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    // Declared before `dir` so the server stops before its directory goes.
    server: Child,
    watchdog: Option<Child>,
    port: u16,
    bin: PathBuf,
    run_as: Option<RunAs>,
    dir: tempfile::TempDir,
}

/// The user/group the server runs as when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Creates a cluster in a new temporary directory and starts it on a
    /// free loopback port with `trust` authentication for user `postgres`.
    pub fn start() -> Result<Self, EmbeddedPgError> {
        Self::start_inner(None)
    }

    /// Like [`start`](Self::start), on a given loopback port (a test that
    /// needs a database to appear at a known address uses this).
    pub fn start_on_port(port: u16) -> Result<Self, EmbeddedPgError> {
        Self::start_inner(Some(port))
    }

    fn start_inner(fixed_port: Option<u16>) -> Result<Self, EmbeddedPgError> {
        let bin = find_bin_dir().ok_or(EmbeddedPgError::BinariesNotFound)?;
        let run_as = run_as_user()?;
        let dir = tempfile::Builder::new()
            .prefix("okr-exporter-pg-")
            .tempdir()
            .map_err(io_err("creating the cluster directory"))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
                .map_err(io_err("handing the cluster directory to the server user"))?;
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting the cluster directory"))?;
        let data = dir.path().join("data");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null());
        as_user(&mut initdb, run_as);
        let out = initdb.output().map_err(io_err("running initdb"))?;
        if !out.status.success() {
            return Err(EmbeddedPgError::InitDb(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }

        // A port taken between our probe and the server's bind is retried.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = match fixed_port {
                Some(p) => p,
                None => free_port().map_err(io_err("finding a free loopback port"))?,
            };
            match start_server(&bin, dir.path(), &data, port, run_as) {
                Ok(server) => {
                    let watchdog = spawn_watchdog(server.id(), dir.path()).ok();
                    return Ok(Self {
                        server,
                        watchdog,
                        port,
                        bin,
                        run_as,
                        dir,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        Err(EmbeddedPgError::Start(last_error))
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// The cluster's temporary directory (data directory and server log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server, keeping its data, as a database outage would
    /// (clients see their connections closed and new ones refused).
    pub fn pause(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port over the same data.
    pub fn resume(&mut self) -> Result<(), EmbeddedPgError> {
        let data = self.dir.path().join("data");
        let server = start_server(&self.bin, self.dir.path(), &data, self.port, self.run_as)
            .map_err(EmbeddedPgError::Start)?;
        self.watchdog = spawn_watchdog(server.id(), self.dir.path()).ok();
        self.server = server;
        Ok(())
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // Already stopped and reaped: its pid may belong to another process now.
        if !matches!(self.server.try_wait(), Ok(None)) {
            return;
        }
        // A pid we spawned and still own (not yet reaped): SIGINT is
        // PostgreSQL's fast shutdown.
        if let Ok(pid) = i32::try_from(self.server.id()) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.server.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.server.kill();
                    let _ = self.server.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_server(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    run_as: Option<RunAs>,
) -> Result<Child, String> {
    let log_path = dir.join("postgres.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("creating server log: {e}"))?;
    if let Some(user) = run_as {
        let _ = std::os::unix::fs::chown(&log_path, Some(user.uid), Some(user.gid));
    }
    let log_err = log
        .try_clone()
        .map_err(|e| format!("opening server log: {e}"))?;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for us must not stop the
        // database before our graceful shutdown has used it.
        .process_group(0);
    as_user(&mut cmd, run_as);
    let mut child = cmd.spawn().map_err(|e| format!("spawning postgres: {e}"))?;

    let pid_file = data.join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "postgres exited ({status}): {}",
                log_tail(&log_path)
            ));
        }
        // Line 8 of postmaster.pid is the postmaster status ("ready" once it
        // accepts connections, PostgreSQL 10 and later).
        if let Ok(text) = fs::read_to_string(&pid_file)
            && text.lines().nth(7).is_some_and(|l| l.trim() == "ready")
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out: {}", log_tail(&log_path)));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = f.read_to_string(&mut text);
    }
    text.trim().to_owned()
}

/// Stops the server and removes the directory once `owner` has died.
fn spawn_watchdog(server_pid: u32, dir: &Path) -> std::io::Result<Child> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        kill -INT "$2" 2>/dev/null
        i=0
        while kill -0 "$2" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        kill -KILL "$2" 2>/dev/null
        rm -rf "$3"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("okr-exporter-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(server_pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

fn as_user(cmd: &mut Command, run_as: Option<RunAs>) {
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid).env("HOME", "/tmp");
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_as_user() -> Result<Option<RunAs>, EmbeddedPgError> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    let name = std::env::var("OKR_EMBEDDED_PG_USER").unwrap_or_else(|_| "postgres".to_owned());
    // The system's user database (getpwnam_r): /etc/passwd, or NSS sources.
    let user = User::from_name(&name).map_err(|errno| EmbeddedPgError::Io {
        context: format!("looking up user '{name}'"),
        source: errno.into(),
    })?;
    let user = user.ok_or(EmbeddedPgError::NoUnprivilegedUser(name))?;
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// Finds a directory holding both `initdb` and `postgres`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if let Ok(real) = fs::canonicalize(&initdb)
                && let Some(parent) = real.parent()
                && has_both(parent)
            {
                return Some(parent.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_accepts_tcp_and_cleans_up() {
        let pg = EmbeddedPostgres::start().expect("embedded postgres starts");
        let dir = pg.dir().to_path_buf();
        assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_ok());
        assert!(pg.url("x").starts_with("postgres://postgres@127.0.0.1:"));
        drop(pg);
        assert!(!dir.exists(), "cluster directory removed on drop");
    }
}
