//! Test harness: real `ringcastd` processes and real clients.
//!
//! [`Ringcastd::start`] writes a config to a temporary directory, starts the binary on
//! port 0, and waits for the one-line JSON ready record on stdout to learn the bound
//! address (no log scraping, no sleeps as synchronisation). The process is killed and
//! the directory removed when the handle drops, even when a test fails.
//!
//! [`webdriver`] runs headless Chromium through chromedriver for the browser tests.
//!
//! [`WsClient`] speaks the client protocol over a real WebSocket; [`http`] is a minimal
//! HTTP/1.1 client over a raw TCP stream (raw so tests can also send malformed requests).
//!
//! The binaries are `$RINGCASTD_BIN` / `$RINGCAST_BIN` when set (`scripts/test` builds
//! them once and sets both); otherwise the harness runs `cargo build --workspace --bins`
//! once per test process so a plain `cargo test` never runs a stale binary.

pub mod cluster;
pub mod compose;
pub mod etcd;
pub mod webdriver;
pub use etcd::EtcdServer;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret the test configs use.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// The API key the test configs use.
pub const API_KEY: &str = "test-api-key";
/// How long a test waits for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config with the test secret, API key and a few namespaces; `extra` is appended
/// (it may add tables or namespaces, but not repeat `[node]`, `[api]` or `[auth]`).
#[must_use]
pub fn base_config(extra: &str) -> String {
    format!(
        r#"
[api]
key = "{API_KEY}"

[auth]
hmac_secret = "{SECRET}"
leeway = "0s"

[namespaces.chat]
anonymous = true

[namespaces.private]

[namespaces.scores]
anonymous = true
client_publish = false

[namespaces.small]
anonymous = true
history_size = 5
{extra}
"#
    )
}

/// A workspace binary: `$env_var` when set, else `target/debug/NAME` after one
/// `cargo build --workspace --bins` per test process (so a plain `cargo test` never runs
/// a stale binary).
pub fn workspace_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    static DEBUG_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DEBUG_DIR
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new(cargo)
                // The whole workspace's binaries, with the workspace's feature set:
                // building one package alone resolves other features and rebuilds
                // shared crates.
                .args(["build", "-q", "--workspace", "--bins"])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err("cargo build --workspace --bins failed".into());
            }
            let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
            Ok(target.join("debug"))
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    Ok(dir.join(name))
}

fn binary() -> Result<PathBuf> {
    workspace_binary("ringcastd", "RINGCASTD_BIN")
}

/// A running `ringcastd`, killed on drop.
#[derive(Debug)]
pub struct Ringcastd {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub node: String,
    _dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Ringcastd {
    /// Starts a node with `config` (TOML) on a free loopback port.
    pub fn start(config: &str) -> Result<Ringcastd> {
        Self::start_with(config, &[])
    }

    /// Like [`Ringcastd::start`] with extra command-line arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Result<Ringcastd> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let cfg = dir.path().join("ringcast.toml");
        std::fs::write(&cfg, config).context("write config")?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).context("stderr file")?;
        let mut child = Command::new(binary()?)
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RINGCAST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .context("spawn ringcastd")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut node = Ringcastd {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node: String::new(),
            _dir: dir,
            stderr_path,
        };
        let line = rx
            .recv_timeout(WAIT)
            .map_err(|_| anyhow!("no ready record within {WAIT:?}; stderr:\n{}", node.stderr()))?;
        let ready: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow!("bad ready record {line:?}: {e}; stderr:\n{}", node.stderr()))?;
        if ready["event"] != "ready" {
            bail!("unexpected first line {line:?}");
        }
        node.addr = ready["client_addr"].as_str().context("client_addr")?.parse()?;
        node.node = ready["node"].as_str().unwrap_or_default().to_owned();
        Ok(node)
    }

    /// What the node logged so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.as_ref().context("already reaped")?.id();
        let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("ringcastd did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads one metric value (first sample whose name and labels start with `prefix`).
    pub async fn metric(&self, prefix: &str) -> Result<f64> {
        let r = http(self.addr, "GET", "/metrics", &[], "").await?;
        r.body
            .lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("metric {prefix} not found"))
    }

    /// Polls a metric until `pred` holds, or fails after [`WAIT`].
    pub async fn wait_metric(&self, prefix: &str, pred: impl Fn(f64) -> bool) -> Result<f64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(prefix).await?;
            if pred(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("metric {prefix} stayed at {v}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Ringcastd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `RINGCAST_TEST_LOGS=DIR` keeps every node's debug log (the temp dir goes with
        // the node), for reading after a failure.
        if let Some(dir) = std::env::var_os("RINGCAST_TEST_LOGS") {
            let dir = PathBuf::from(dir);
            let name = format!("{}-{}.log", if self.node.is_empty() { "node" } else { &self.node }, self.addr.port());
            let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(&self.stderr_path, dir.join(name)));
        }
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 token signed with [`SECRET`].
#[must_use]
pub fn token(claims: &Value) -> String {
    jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
        .and_then(|key| jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key))
        .unwrap_or_default()
}

/// A token for `sub` valid for `ttl_secs`, allowed to subscribe and publish on `caps`.
#[must_use]
pub fn user_token(sub: &str, ttl_secs: u64, caps: &[&str]) -> String {
    token(&json!({"sub": sub, "exp": unix_now() + ttl_secs, "caps": {"subscribe": caps, "publish": caps}}))
}

/// A response from [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON (`Null` when it is not JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpResponse> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw_http(addr, req.as_bytes()).await
}

/// Sends raw bytes and parses the HTTP response. Reading stops at the end of the body
/// (by `Content-Length`), at EOF, or, for `101 Switching Protocols`, after the head: the
/// connection may stay open, and is dropped.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf) {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.context("response timed out")??;
    parse_response(&buf)
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if buf.starts_with(b"HTTP/1.1 101") {
        return true;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= end + 4 + len)
}

fn parse_response(buf: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, rest) = text.split_once("\r\n\r\n").context("no header end in response")?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line.split(' ').nth(1).context("status")?.parse()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_owned() };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("chunk size")?;
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).context("chunk end")?;
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
#[derive(Debug)]
pub struct WsClient {
    ws: Ws,
    next_id: u64,
    /// Frames received while waiting for something else.
    pending: VecDeque<Value>,
    /// The `subscribed` (or `error`) push for the registry channel, after `connect`
    /// with a token.
    pub registry: Option<Value>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    pub async fn open(url: &str) -> Result<WsClient> {
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.context("connect timed out")??;
        Ok(WsClient { ws, next_id: 1, pending: VecDeque::new(), registry: None })
    }

    /// Opens a connection whose socket receive buffer is `bytes` (a reader the kernel
    /// cannot buffer much for: with it, a client that stops reading stalls the server's
    /// writes quickly).
    pub async fn open_with_recv_buffer(url: &str, bytes: u32) -> Result<WsClient> {
        let host = url.strip_prefix("ws://").and_then(|r| r.split('/').next()).context("ws://host:port/ URL")?;
        let addr: SocketAddr = host.parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(bytes)?;
        let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.context("connect timed out")??;
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)))
            .await
            .context("handshake timed out")??;
        Ok(WsClient { ws, next_id: 1, pending: VecDeque::new(), registry: None })
    }

    /// Opens and sends `connect` (with `token`, or anonymous); returns the reply. With a
    /// token, the server subscribes the connection to its registry channel: the
    /// `subscribed` push that reports it is read here and kept in [`WsClient::registry`].
    pub async fn connect(url: &str, token: Option<&str>) -> Result<(WsClient, Value)> {
        let mut c = WsClient::open(url).await?;
        let reply = c.connect_with(token, None).await?;
        Ok((c, reply))
    }

    /// Sends `connect` on an open client, with `since` for the registry channel.
    pub async fn connect_with(&mut self, token: Option<&str>, since: Option<Value>) -> Result<Value> {
        let mut cmd = match token {
            Some(t) => json!({"type": "connect", "token": t}),
            None => json!({"type": "connect"}),
        };
        if let Some(s) = since {
            cmd["since"] = s;
        }
        let reply = self.request(cmd).await?;
        if let Some(channel) = reply["user_channel"].as_str() {
            let push = self.next_push().await?;
            let named = push["channel"] == json!(channel)
                || push["error"]["message"].as_str().is_some_and(|m| m.contains(channel));
            if !named {
                bail!("expected the registry subscription of {channel} after `connected`, got {push}");
            }
            self.registry = Some(push);
        }
        Ok(reply)
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_owned())).await?;
        Ok(())
    }

    pub async fn send_message(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// Sends a command with a fresh id and returns the frame that answers it; pushes
    /// received meanwhile are kept for [`WsClient::next_push`].
    pub async fn request(&mut self, mut cmd: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.send_text(&cmd.to_string()).await?;
        self.reply_to(id).await
    }

    /// Waits for the frame with `id`.
    pub async fn reply_to(&mut self, id: u64) -> Result<Value> {
        if let Some(i) = self.pending.iter().position(|f| f["id"] == json!(id)) {
            return self.pending.remove(i).context("pending");
        }
        loop {
            let f = self.read_frame().await?;
            if f["id"] == json!(id) {
                return Ok(f);
            }
            self.pending.push_back(f);
        }
    }

    /// The next frame without an id (a push), in arrival order.
    pub async fn next_push(&mut self) -> Result<Value> {
        if let Some(i) = self.pending.iter().position(|f| f.get("id").is_none()) {
            return self.pending.remove(i).context("pending");
        }
        loop {
            let f = self.read_frame().await?;
            if f.get("id").is_none() {
                return Ok(f);
            }
            self.pending.push_back(f);
        }
    }

    /// The next text frame as JSON.
    pub async fn read_frame(&mut self) -> Result<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.context("no frame within timeout")?;
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) =
                        c.map(|c| (u16::from(c.code), c.reason.to_string())).unwrap_or((1005, String::new()));
                    bail!("connection closed: {code} {reason}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> Result<Closed> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.context("no close within timeout")?;
            match m {
                Some(Ok(Message::Close(Some(c)))) => {
                    return Ok(Closed { code: u16::from(c.code), reason: c.reason.to_string() })
                }
                Some(Ok(Message::Close(None))) => {
                    return Ok(Closed { code: u16::from(CloseCode::Status), reason: String::new() })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error before close: {e}"),
                None => bail!("connection ended without a close frame"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, channel: &str, since: Option<Value>) -> Result<Value> {
        let mut cmd = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = since {
            cmd["since"] = s;
        }
        self.request(cmd).await
    }

    /// Publishes and returns the reply.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<Value> {
        self.request(json!({"type": "publish", "channel": channel, "data": data})).await
    }

    /// Reads `n` `message` pushes for `channel`.
    pub async fn messages(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let p = self.next_push().await?;
            if p["type"] == "message" {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// What a reader saw of a channel, by [`WsClient::read_coverage`]: `("m", offset, offset)`
/// per message and `("gap", from, to)` per `gap` push.
pub type Coverage = Vec<(String, u64, u64)>;

impl WsClient {
    /// Reads pushes until offset `upto` is covered by a message or a `gap`; every gap must
    /// carry `gap_reason`.
    pub async fn read_coverage(&mut self, upto: u64, gap_reason: &str) -> Result<Coverage> {
        let mut seen = Vec::new();
        loop {
            let f = self.next_push().await?;
            let entry = match f["type"].as_str() {
                Some("message") => {
                    let o = f["offset"].as_u64().unwrap_or(0);
                    ("m".to_owned(), o, o)
                }
                Some("gap") => {
                    anyhow::ensure!(f["reason"] == gap_reason, "a gap with reason {gap_reason}: {f}");
                    ("gap".to_owned(), f["from"].as_u64().unwrap_or(0), f["to"].as_u64().unwrap_or(0))
                }
                _ => continue,
            };
            let end = entry.2;
            seen.push(entry);
            if end >= upto {
                return Ok(seen);
            }
        }
    }
}

/// Every offset `1..=upto` appears exactly once, in order, as a message or inside a gap.
pub fn assert_covers(seen: &[(String, u64, u64)], upto: u64) {
    let mut next = 1;
    for (kind, from, to) in seen {
        assert_eq!(*from, next, "{kind} {from}-{to} after {}: {seen:?}", next - 1);
        next = to + 1;
    }
    assert_eq!(next, upto + 1, "{seen:?}");
}

/// The error code of an `error` frame or HTTP error body (`""` when there is none).
#[must_use]
pub fn error_code(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Publishes over HTTP with the API key; returns the response.
pub async fn http_publish(node: &Ringcastd, channel: &str, data: Value) -> Result<HttpResponse> {
    let body = json!({"channel": channel, "data": data}).to_string();
    http(node.addr, "POST", "/v1/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], &body).await
}

/// Offsets of a list of `message` pushes.
#[must_use]
pub fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["offset"].as_u64()).collect()
}

/// Runs `ringcastd` with `args` (and `config` written to a file passed as `--config`
/// when given) and waits for it to exit; returns the exit code and stderr.
pub fn run_to_exit(config: Option<&str>, args: &[&str]) -> Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(binary()?);
    if let Some(c) = config {
        let path = dir.path().join("ringcast.toml");
        std::fs::write(&path, c)?;
        cmd.arg("--config").arg(path);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output()?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}
