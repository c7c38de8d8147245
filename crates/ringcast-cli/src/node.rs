//! Talking to a node's HTTP API: a minimal HTTP/1.1 client over one TCP connection per
//! request (the CLI makes a handful of requests; no pool, no TLS, no redirects).

use crate::exit::CliError;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where a node's client port is and how to authenticate.
#[derive(Debug, Clone)]
pub struct NodeApi {
    /// `host:port`.
    pub addr: String,
    pub api_key: Option<String>,
}

impl NodeApi {
    /// From `http://host:port` (or `host:port`).
    pub fn new(url: &str, api_key: Option<String>) -> Result<NodeApi, CliError> {
        let addr = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        if addr.is_empty() || !addr.contains(':') || addr.contains('/') {
            return Err(CliError::Usage(format!("--node {url:?}: write http://HOST:PORT, e.g. http://127.0.0.1:7400")));
        }
        Ok(NodeApi { addr: addr.to_owned(), api_key })
    }

    /// The same credentials, another node.
    pub fn at(&self, addr: &str) -> NodeApi {
        NodeApi { addr: addr.to_owned(), api_key: self.api_key.clone() }
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.request("POST", path, Some(body.to_string())).await
    }

    async fn request(&self, method: &str, path: &str, body: Option<String>) -> Result<Value, CliError> {
        let run = async {
            let mut s = TcpStream::connect(&self.addr).await?;
            let body = body.unwrap_or_default();
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                self.addr,
                body.len()
            );
            if let Some(k) = &self.api_key {
                req.push_str(&format!("Authorization: Bearer {k}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            (&mut s).take(MAX_RESPONSE_BYTES as u64).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(REQUEST_TIMEOUT, run)
            .await
            .map_err(|_| CliError::Failed(format!("node {} did not answer within {REQUEST_TIMEOUT:?}", self.addr)))?
            .map_err(|e| {
                CliError::Failed(format!("cannot reach node {}: {e} (is it running? see --node)", self.addr))
            })?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let code = json["error"]["code"].as_str().unwrap_or("http_error");
        let message = json["error"]["message"].as_str().unwrap_or(body.trim());
        let hint = if status == 401 { " (pass --api-key or set RINGCAST_API_KEY)" } else { "" };
        Err(CliError::Failed(format!("{} answered {status} {code}: {message}{hint}", self.addr)))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// Percent-encodes a channel name for a URL path (`/` and `%`, the only bytes a valid
/// channel can hold that a path segment cannot).
pub fn path_segment(channel: &str) -> String {
    channel.replace('%', "%25").replace('/', "%2F")
}
