//! The scoreboard feed: every tick, one `POST /v1/publish/batch` carrying the update of
//! every game (the whole state of each, keyed `game-{g}`), on one kept-alive HTTP/1.1
//! connection, open loop: tick `k` is written when it is due whatever the server has
//! answered so far (requests are pipelined), and its `ts` is the scheduled time, so a
//! server that falls behind shows up as staleness, not as a slower feed.
//!
//! A reader task takes the responses off the same connection and counts calls that
//! failed or had an item refused (`proto/openapi.yaml`, `publishBatch`).

use super::game::{self, Game};
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// What the feed did, shared with the run.
#[derive(Debug, Default)]
pub struct FeedStats {
    pub batches: u64,
    pub answered: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub max_lag: Duration,
}

/// The games and the request body of the current tick.
#[derive(Debug)]
pub struct Feed {
    namespace: String,
    games: Vec<Game>,
    body: String,
}

impl Feed {
    #[must_use]
    pub fn new(namespace: &str, games: usize) -> Feed {
        Feed { namespace: namespace.to_owned(), games: (0..games).map(Game::new).collect(), body: String::new() }
    }

    /// Advances every game by one update (`seq`, scheduled at `ts_us`) and returns the
    /// batch body: `{"items":[{"channel":..,"key":..,"data":STATE},..]}`.
    pub fn tick(&mut self, seq: u64, ts_us: u64, tick_ms: u32) -> &str {
        self.body.clear();
        self.body.push_str(r#"{"items":["#);
        for (g, game) in self.games.iter_mut().enumerate() {
            game.advance(seq, ts_us, tick_ms);
            if g > 0 {
                self.body.push(',');
            }
            self.body.push_str(&format!(
                r#"{{"channel":"{}","key":"{}","data":{}}}"#,
                game::channel(&self.namespace, g),
                game::key(g),
                game.encode()
            ));
        }
        self.body.push_str("]}");
        &self.body
    }

    /// The state of every game as viewers should hold it at the end.
    #[must_use]
    pub fn finals(&self) -> Vec<Value> {
        self.games.iter().map(|g| serde_json::to_value(g.state()).unwrap_or(Value::Null)).collect()
    }
}

/// The request for one batch.
#[must_use]
pub fn batch_request(addr: SocketAddr, api_key: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "POST /v1/publish/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// One HTTP/1.1 response: (bytes consumed from the buffer, status, body).
pub type Response<'a> = (usize, u16, &'a [u8]);

/// The first complete HTTP/1.1 response of `buf`, or `None` when more bytes are needed.
/// Needs a `Content-Length` (the server always sends one).
pub fn http_response(buf: &[u8]) -> Result<Option<Response<'_>>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8".to_owned())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| "response without Content-Length".to_owned())?;
    let end = head_end + 4 + length;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((end, status, &buf[head_end + 4..end])))
}

/// Items of a batch answer that carry an `error` instead of an ack.
#[must_use]
pub fn item_errors(body: &[u8]) -> usize {
    body.windows(8).filter(|w| w == b"\"error\":").count()
}

/// Connects the feed's HTTP connection.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let s = TcpStream::connect(addr).await.with_context(|| format!("publisher: connect to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s.into_split())
}

/// Reads responses until the connection ends, counting them into `stats`.
pub async fn read_responses(mut r: OwnedReadHalf, stats: Rc<RefCell<FeedStats>>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let mut pos = 0;
        loop {
            match http_response(&buf[pos..]) {
                Ok(Some((n, status, body))) => {
                    let mut st = stats.borrow_mut();
                    st.answered += 1;
                    let errors = item_errors(body);
                    if status != 200 || errors > 0 {
                        st.failed += 1;
                        if st.first_error.is_none() {
                            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                            st.first_error = Some(if status == 200 {
                                format!("publish batch: {errors} items refused: {text}")
                            } else {
                                format!("publish batch: HTTP {status}: {text}")
                            });
                        }
                    }
                    pos += n;
                }
                Ok(None) => break,
                Err(e) => {
                    stats.borrow_mut().first_error.get_or_insert(format!("publish batch: {e}"));
                    return;
                }
            }
        }
        buf.drain(..pos);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Publishes tick 0 (the state viewers get in their snapshot) and waits for its answer.
pub async fn publish_first(
    feed: &mut Feed,
    w: &mut OwnedWriteHalf,
    addr: SocketAddr,
    api_key: &str,
    ts_us: u64,
    stats: &Rc<RefCell<FeedStats>>,
) -> anyhow::Result<()> {
    let req = batch_request(addr, api_key, feed.tick(0, ts_us, 0));
    w.write_all(&req).await.context("publisher: write the first batch")?;
    stats.borrow_mut().batches += 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.borrow().answered == 0 {
        if Instant::now() > deadline {
            bail!("publisher: no answer to the first batch within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(e) = stats.borrow().first_error.clone() {
        bail!("publisher: the first batch was refused ({e}); check the api key and the namespace");
    }
    Ok(())
}

/// The open-loop schedule: ticks `1..=ticks`, tick `k` due at `start + (k - 1) * period`
/// and stamped with that time (`base` is the generator's clock origin).
pub struct Schedule {
    pub base: Instant,
    pub start: Instant,
    pub period: Duration,
    pub ticks: u64,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule").field("period", &self.period).field("ticks", &self.ticks).finish()
    }
}

/// Runs the schedule; returns the feed (its games' final states) and the connection's
/// write half when done. Keep the write half until every answer is in: dropping it
/// half-closes the connection, and the server may then drop the last pipelined request.
pub async fn run(
    mut feed: Feed,
    mut w: OwnedWriteHalf,
    addr: SocketAddr,
    api_key: String,
    schedule: Schedule,
    stats: Rc<RefCell<FeedStats>>,
) -> anyhow::Result<(Feed, OwnedWriteHalf)> {
    let tick_ms = u32::try_from(schedule.period.as_millis()).unwrap_or(u32::MAX);
    for k in 1..=schedule.ticks {
        let due = schedule.start + schedule.period.saturating_mul(u32::try_from(k - 1).unwrap_or(u32::MAX));
        tokio::time::sleep_until(due.into()).await;
        let lag = Instant::now().saturating_duration_since(due);
        let ts_us = u64::try_from((due - schedule.base).as_micros()).unwrap_or(u64::MAX);
        let req = batch_request(addr, &api_key, feed.tick(k, ts_us, tick_ms));
        w.write_all(&req).await.context("publisher: write a batch")?;
        let mut st = stats.borrow_mut();
        st.batches += 1;
        st.max_lag = st.max_lag.max(lag);
    }
    Ok((feed, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_one_batch_with_every_game_keyed_on_its_channel() {
        let mut feed = Feed::new("scores", 3);
        let body: Value = serde_json::from_str(feed.tick(4, 200_000, 50)).unwrap_or_else(|e| panic!("{e}"));
        let items = body["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 3);
        for (g, item) in items.iter().enumerate() {
            assert_eq!(item["channel"], format!("scores:game-{g}"));
            assert_eq!(item["key"], format!("game-{g}"));
            assert_eq!(game::stamp(&item["data"]), Some((4, 200_000)));
        }
        assert_eq!(feed.finals()[2], items[2]["data"]);
    }

    #[test]
    fn responses_are_split_by_content_length_and_item_errors_counted() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{\"results\":[]}";
        let mut two = ok.to_vec();
        two.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}");
        let Ok(Some((n, 200, body))) = http_response(&two) else { panic!("first response") };
        assert_eq!(body, b"{\"results\":[]}");
        assert_eq!(n, ok.len());
        assert!(matches!(http_response(&two[n..]), Ok(Some((_, 400, b"{}")))));
        assert_eq!(http_response(&two[..20]), Ok(None));
        assert_eq!(http_response(&ok[..ok.len() - 3]), Ok(None));
        assert!(http_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let answer =
            br#"{"results":[{"channel":"a","epoch":"1","offset":2},{"channel":"b","error":{"code":"unavailable"}}]}"#;
        assert_eq!(item_errors(answer), 1);
    }

    #[test]
    fn the_request_carries_the_key_and_the_length() {
        let req = batch_request(SocketAddr::from(([127, 0, 0, 1], 7492)), "k3y-k3y-k3y", "{\"items\":[]}");
        let text = String::from_utf8_lossy(&req);
        assert!(text.starts_with("POST /v1/publish/batch HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer k3y-k3y-k3y\r\n"));
        assert!(text.ends_with("Content-Length: 12\r\n\r\n{\"items\":[]}"));
    }
}
