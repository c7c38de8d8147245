//! A minimal HTTP/1.1 GET client for the node API (`/v1/cluster`, `/v1/channels/...`,
//! `/metrics`): one request per connection, bounded by a timeout. Raw TCP like the test
//! harness, so the chaos crate needs no HTTP client dependency.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connect included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest response body read (history pages of 1000 small messages fit easily).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// `GET path` with the API key; returns the status and body text.
pub async fn get(addr: SocketAddr, path: &str, api_key: &str) -> Result<(u16, String)> {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\nConnection: close\r\n\r\n");
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE_BYTES {
                bail!("response larger than {MAX_RESPONSE_BYTES} bytes");
            }
        }
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, fut).await.context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status: u16 = head.split(' ').nth(1).context("no status")?.parse()?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((status, body))
}

/// `GET path` expecting 200 and JSON.
pub async fn get_json(addr: SocketAddr, path: &str, api_key: &str) -> Result<Value> {
    let (status, body) = get(addr, path, api_key).await?;
    if status != 200 {
        bail!("GET {path} on {addr}: {status} {body}");
    }
    Ok(serde_json::from_str(&body)?)
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
