//! A real, single-member etcd for tests.
//!
//! [`EtcdServer::start`] runs the `etcd` binary (`$ETCD_BIN`, else `/usr/bin/etcd`) on two
//! free loopback ports with a data directory in a temporary directory, and returns once
//! `GET /health` answers `{"health":"true"}` (etcd only says so once it has a leader, so
//! the server is ready for writes). [`EtcdServer::stop`] kills it (SIGKILL: a crash, not a
//! shutdown) and [`EtcdServer::restart`] starts it again on the same ports and data
//! directory, so keys, leases and revisions survive. The process is killed and the
//! directory removed on drop, even when a test panics.
//!
//! Free ports are found by binding port 0 and releasing it, which leaves a small window in
//! which another process may take the port; `start` therefore retries a few times with
//! fresh ports. `restart` cannot (the ports are the point), which is fine on loopback.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` and `restart` wait for etcd to report healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts `start` makes with fresh ports before giving up.
const START_ATTEMPTS: usize = 3;

/// A running etcd, killed and cleaned up on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd on free loopback ports with an empty data directory.
    pub fn start() -> Result<EtcdServer> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = EtcdServer {
                child: None,
                client_port: free_port()?,
                peer_port: free_port()?,
                dir: tempfile::tempdir().context("temp dir for etcd")?,
            };
            if server.client_port == server.peer_port {
                continue;
            }
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port pair found")))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    #[must_use]
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// Whether the process is running (as far as this handle knows).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills etcd (SIGKILL) and waits for it to exit. A no-op when it is not running.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("kill etcd")?;
            c.wait().context("wait for etcd")?;
        }
        Ok(())
    }

    /// Stops etcd if it runs, then starts it again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn_and_wait()
    }

    /// What etcd logged so far (its stderr).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        // Appending keeps the log of earlier runs of this server for post-mortems.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).context("etcd log")?;
        let child = Command::new(binary())
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", binary().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!("etcd exited with {status} before it was ready; log:\n{}", self.log());
                }
            }
            if healthy(self.client_addr()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.stop();
                bail!("etcd not healthy within {ETCD_READY_TIMEOUT:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One `GET /health` over plain HTTP/1.1; true when etcd answers `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        Ok(text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\""))
    };
    probe().unwrap_or(false)
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
