//! A private, throwaway PostgreSQL cluster on a free loopback port.

use std::io::{self, Read as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time allowed for `postgres` to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running cluster. Dropping it (or the process ending in any way) stops
/// the server and deletes its directory.
#[derive(Debug)]
pub struct Cluster {
    port: u16,
    /// Plain TCP sessions are refused: readiness is checked on the socket.
    tls_only: bool,
    dir: PathBuf,
    /// The watchdog's stdin: closing it is the signal to shut down.
    watchdog_stdin: Mutex<Option<ChildStdin>>,
    watchdog: Mutex<Child>,
}

/// What a TLS-only cluster ([`Cluster::start_tls`]) serves with: PEM text
/// the test made (with `rcgen`, say).
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// The server's certificate (chain), PEM.
    pub cert_pem: String,
    /// The server's private key, PEM; written readable by its owner only.
    pub key_pem: String,
    /// CA the server trusts for client certificates (`ssl_ca_file`), PEM.
    pub client_ca_pem: Option<String>,
    /// `pg_hba.conf` for TCP connections, e.g. `hostssl all all 127.0.0.1/32
    /// trust` and `hostnossl all all 0.0.0.0/0 reject`. A `local all all
    /// trust` line is put before it (the readiness check uses the socket).
    pub pg_hba: String,
}

impl Cluster {
    /// `initdb` + start, as the `postgres` user when running as root.
    pub fn start() -> io::Result<Self> {
        Self::start_with(None)
    }

    /// A cluster with `ssl=on`, the given certificate, key and `pg_hba.conf`
    /// (stopped and deleted like [`Cluster::start`]'s). Connect to
    /// `127.0.0.1` or `localhost` on [`Cluster::port`].
    pub fn start_tls(tls: &TlsServer) -> io::Result<Self> {
        Self::start_with(Some(tls))
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn start_with(tls: Option<&TlsServer>) -> io::Result<Self> {
        let bindir = find_bindir()?;
        let as_root = is_root();
        let dir = std::env::temp_dir().join(format!(
            "dispatcher-testpg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        if as_root {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let data = dir.join("data");
        let out = user_command(as_root, &bindir.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io::Error::other(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut extra = Vec::new();
        if let Some(tls) = tls {
            if let Err(e) = write_tls_files(&data, tls, as_root) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            extra.extend(
                [
                    "ssl=on",
                    "ssl_cert_file=server.crt",
                    "ssl_key_file=server.key",
                ]
                .map(String::from),
            );
            if tls.client_ca_pem.is_some() {
                extra.push("ssl_ca_file=client-ca.crt".to_owned());
            }
        }
        let port = free_port()?;
        // The shell starts postgres, then blocks reading stdin. Our end of that
        // pipe closes when this process exits for any reason; then the shell
        // stops postgres (fast shutdown) and removes the directory.
        // Arguments after the third are extra `-c` settings.
        let script = r#"
            bin=$1 dir=$2 port=$3
            shift 3
            for setting in "$@"; do set -- "$@" -c "$setting"; shift; done
            "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -h 127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=300 -c shared_buffers=32MB "$@" > "$dir/postgres.log" 2>&1 &
            pid=$!
            cat > /dev/null
            kill -INT "$pid" 2>/dev/null
            wait "$pid"
            rm -rf "$dir"
        "#;
        let mut watchdog = user_command(as_root, Path::new("sh"))
            .arg("-c")
            .arg(script)
            .arg("dispatcher-testpg")
            .arg(&bindir)
            .arg(&dir)
            .arg(port.to_string())
            .args(&extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = watchdog.stdin.take();
        let cluster = Self {
            port,
            tls_only: tls.is_some(),
            dir,
            watchdog_stdin: Mutex::new(stdin),
            watchdog: Mutex::new(watchdog),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Waits until the server answers the PostgreSQL protocol. Polling a
    /// condition with a deadline: the server has no readiness notification.
    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut delay = Duration::from_millis(5);
        loop {
            let ready = if self.tls_only {
                startup_complete_on_socket(&self.dir.join(format!(".s.PGSQL.{}", self.port)))
            } else {
                answers_protocol(self.port)
            };
            if ready {
                return Ok(());
            }
            let exited = self
                .watchdog
                .lock()
                .ok()
                .and_then(|mut child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(io::Error::other(format!(
                    "postgres exited early ({status}): {}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "postgres did not start in time: {}",
                    self.log()
                )));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut stdin) = self.watchdog_stdin.lock() {
            stdin.take();
        }
        if let Ok(mut child) = self.watchdog.lock() {
            let _ = child.wait();
        }
    }
}

/// Sends an SSLRequest and expects PostgreSQL's one-byte answer ('N' or 'S').
fn answers_protocol(port: u16) -> bool {
    use std::io::Write as _;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut answer = [0u8; 1];
    s.write_all(&ssl_request).is_ok() && s.read_exact(&mut answer).is_ok() && matches!(answer[0], b'N' | b'S')
        // A server still starting up accepts the connection but then reports
        // "the database system is starting up"; check with a real query path.
        && startup_complete(port)
}

fn startup_complete(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    accepts_sessions(s)
}

/// [`startup_complete`] on the Unix socket (TLS-only clusters trust it).
fn startup_complete_on_socket(path: &Path) -> bool {
    let Ok(s) = std::os::unix::net::UnixStream::connect(path) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    accepts_sessions(s)
}

/// The startup message gets an error packet ('E') while the server is still
/// starting, and an authentication request ('R') once it accepts sessions.
fn accepts_sessions(mut s: impl io::Read + io::Write) -> bool {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for kv in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut msg = len.to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let mut answer = [0u8; 1];
    s.write_all(&msg).is_ok() && s.read_exact(&mut answer).is_ok() && answer[0] == b'R'
}

/// Certificate, key (mode 0600), client CA and `pg_hba.conf` in the data
/// directory, owned by the user the server runs as.
fn write_tls_files(data: &Path, tls: &TlsServer, as_root: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let hba = format!("local all all trust\n{}\n", tls.pg_hba);
    let mut files = vec![
        ("server.crt", tls.cert_pem.as_str(), 0o644),
        ("server.key", tls.key_pem.as_str(), 0o600),
        ("pg_hba.conf", hba.as_str(), 0o600),
    ];
    if let Some(ca) = &tls.client_ca_pem {
        files.push(("client-ca.crt", ca.as_str(), 0o644));
    }
    let owner = if as_root { Some(postgres_ids()?) } else { None };
    for (name, text, mode) in files {
        let path = data.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_ids() -> io::Result<(u32, u32)> {
    let id = |flag: &str| -> io::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                io::Error::other(
                    "running as root needs a 'postgres' user (install the postgresql package)",
                )
            })
    };
    Ok((id("-u")?, id("-g")?))
}

/// `program` run as `postgres` via `runuser` when we are root (initdb and
/// postgres refuse to run as root), else directly.
fn user_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// PostgreSQL server binaries: `PG_BINDIR`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, or `initdb` on `PATH`.
fn find_bindir() -> io::Result<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|d| has_initdb(d))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = versions.pop() {
        return Ok(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_initdb(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(io::Error::other(
        "PostgreSQL server binaries not found: install the 'postgresql' package, set PG_BINDIR, or set DATABASE_URL",
    ))
}
