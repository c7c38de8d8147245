//! Real Chromium for browser tests, driven over the W3C WebDriver protocol.
//!
//! [`Chromedriver::start`] runs Debian's `chromedriver` (package `chromium-driver`,
//! which `scripts/test` installs with `chromium`) on a free loopback port, in its own
//! process group, and waits for `/status` to say it is ready. [`Chromedriver::browser`]
//! opens a session of headless Chromium (`--headless --no-sandbox --disable-gpu
//! --disable-background-networking`). The WebDriver calls are plain JSON over HTTP with
//! the harness's [`crate::http`] client: navigate, run a script, screenshot.
//!
//! Clean-up does not depend on the test passing: dropping a [`Browser`] deletes its
//! session, and dropping the [`Chromedriver`] kills its whole process group (the driver
//! and every browser process it started).

use crate::{http, WAIT};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium flags every test browser runs with.
pub const CHROMIUM_ARGS: [&str; 5] =
    ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--window-size=1280,900"];

/// A running `chromedriver`, killed with its browsers on drop.
#[derive(Debug)]
pub struct Chromedriver {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub fn start() -> Result<Chromedriver> {
        let exe = which("chromedriver").context(
            "chromedriver not found: install Debian's chromium and chromium-driver packages \
             (scripts/test does: apt-get install chromium chromium-driver)",
        )?;
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("chromedriver.log");
        // The port is free now; another process could take it before chromedriver
        // binds it, in which case the readiness wait below fails with the log.
        let port = free_port()?;
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawn chromedriver")?;
        let d = Chromedriver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), _dir: dir, log };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = std::thread::scope(|s| {
                s.spawn(|| blocking_get(d.addr, "/status")).join().unwrap_or_else(|_| Err(anyhow!("panicked")))
            });
            if ready.is_ok_and(|v| v["value"]["ready"] == true) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready within {WAIT:?}; log:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What chromedriver logged.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Opens a headless Chromium session.
    pub async fn browser(&self) -> Result<Browser> {
        let binary = which("chromium").context("chromium not found: install Debian's chromium package")?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": CHROMIUM_ARGS},
        }}});
        let v = call(self.addr, "POST", "/session", &caps).await?;
        let id = v["sessionId"].as_str().with_context(|| format!("no sessionId in {v}"))?.to_owned();
        Ok(Browser { driver: self.addr, session: id })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The negative pid names the process group: chromedriver and its browsers.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// A blocking GET for set-up and `Drop`, where no runtime may be running.
fn blocking_get(addr: SocketAddr, path: &str) -> Result<Value> {
    blocking(addr, "GET", path)
}

fn blocking(addr: SocketAddr, method: &str, path: &str) -> Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async { Ok(http(addr, method, path, &[], "").await?.json()) })
}

/// One WebDriver command; returns its `value`, or the WebDriver error as an error.
async fn call(driver: SocketAddr, method: &str, path: &str, body: &Value) -> Result<Value> {
    let body = if method == "GET" || method == "DELETE" { String::new() } else { body.to_string() };
    let r = http(driver, method, path, &[("Content-Type", "application/json")], &body).await?;
    let v = r.json();
    if r.status != 200 {
        bail!("WebDriver {method} {path} answered {}: {}", r.status, v["value"]["message"].as_str().unwrap_or(&r.body));
    }
    Ok(v["value"].clone())
}

/// One browser session.
#[derive(Debug)]
pub struct Browser {
    driver: SocketAddr,
    session: String,
}

impl Browser {
    async fn cmd(&self, method: &str, what: &str, body: &Value) -> Result<Value> {
        call(self.driver, method, &format!("/session/{}/{what}", self.session), body).await
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "url", &json!({ "url": url })).await.map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.cmd("POST", "execute/sync", &json!({"script": script, "args": args})).await
    }

    /// Polls `script` until it returns a truthy value (returned), or fails after
    /// `timeout` with the last value and `context`.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(script, json!([])).await?;
            let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                && v != json!(0)
                && v != json!("")
                && v.as_array().is_none_or(|a| !a.is_empty());
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("waited {timeout:?} for {what}; the page says {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching a CSS selector (`None` when absent).
    pub async fn text(&self, selector: &str) -> Result<Option<String>> {
        let v = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([selector]),
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Saves a PNG screenshot of the viewport to `path` (directories are created).
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd("GET", "screenshot", &Value::Null).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let (driver, path) = (self.driver, format!("/session/{}", self.session));
        // A thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || blocking(driver, "DELETE", &path)).join();
    }
}

/// The folder for a test's screenshots: `tests/output/browser/{test}/`.
#[must_use]
pub fn output_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("output").join("browser").join(test)
}
