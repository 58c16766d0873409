//! `--request-log PATH` (`EmulatorConfig::request_log`): one JSON line per HTTP request
//! received, appended to PATH, with what arrived on the wire, before anything interprets
//! it: method, path, raw query string, every header (in the order received) and the body.
//! An independent verifier (the official Python SDK's signer, `tests/python`) can then
//! recompute the signature of every request our client really sent.
//!
//! A line: `{"seq", "time", "method", "uri", "path", "query" (null without `?`), "version",
//! "headers": [[name, value], ...], "body_base64"}`. Header names are as hyper hands them
//! over, lowercase (HTTP/1 names are case-insensitive); a value that is not UTF-8 comes as
//! `[name, base64, "base64"]`. Admin requests under `/_emulator/` are logged too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jiff::Timestamp;
use serde::Serialize;

use super::api::MAX_BODY;
use super::wire::rfc3339;
use super::Emulator;

/// Bodies up to this size are logged and handed on whole (the API itself refuses anything
/// over `MAX_BODY`, with its own answer); a larger one is refused here with a bare 413.
const LOG_MAX_BODY: usize = 4 * MAX_BODY;

/// Why a request could not be logged.
#[derive(Debug)]
pub(crate) enum RequestLogError {
    Io(std::io::Error),
    Json(serde_json::Error),
}

impl std::fmt::Display for RequestLogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "request log: {e}"),
            Self::Json(e) => write!(f, "request log: {e}"),
        }
    }
}

impl std::error::Error for RequestLogError {}

/// The open log file (opened on the first request, or checked at startup by `open`).
#[derive(Debug)]
pub(crate) struct RequestLog {
    path: PathBuf,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    file: Option<File>,
    seq: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: String,
    method: &'a str,
    uri: String,
    path: &'a str,
    query: Option<&'a str>,
    version: String,
    headers: Vec<Vec<String>>,
    body_base64: String,
}

/// Opens (creating if needed) `path` for appending.
pub(crate) fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RequestLog {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(LogState::default()),
        }
    }

    fn append(
        &self,
        parts: &axum::http::request::Parts,
        body: &[u8],
    ) -> Result<(), RequestLogError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| match std::str::from_utf8(v.as_bytes()) {
                Ok(s) => vec![k.as_str().to_string(), s.to_string()],
                Err(_) => vec![
                    k.as_str().to_string(),
                    b64.encode(v.as_bytes()),
                    "base64".into(),
                ],
            })
            .collect();
        // One writer at a time, so lines never interleave and `seq` is the file order.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let line = Line {
            seq: st.seq,
            time: rfc3339(Timestamp::now()),
            method: parts.method.as_str(),
            uri: parts.uri.to_string(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            version: format!("{:?}", parts.version),
            headers,
            body_base64: b64.encode(body),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(RequestLogError::Json)?;
        bytes.push(b'\n');
        if st.file.is_none() {
            st.file = Some(open(&self.path).map_err(RequestLogError::Io)?);
        }
        match st.file.as_mut() {
            Some(f) => f.write_all(&bytes).map_err(RequestLogError::Io),
            None => Ok(()),
        }
    }
}

/// Middleware: logs the request, then hands it on unchanged (its body re-assembled).
pub(crate) async fn record(State(emu): State<Arc<Emulator>>, req: Request, next: Next) -> Response {
    let Some(log) = emu.request_log.as_ref() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, LOG_MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            tracing::warn!(uri = %parts.uri, "request log: body over {LOG_MAX_BODY} bytes, not logged");
            return (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.").into_response();
        }
    };
    if let Err(e) = log.append(&parts, &body) {
        tracing::warn!(path = %log.path.display(), error = %e, "request not logged");
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use serde_json::{json, Value};

    use crate::EmulatorConfig;

    /// Raw bytes in, the same bytes in the log: header order, a value that is not UTF-8, the
    /// raw query (`%20` and `+` untouched), the body.
    #[tokio::test]
    async fn logs_the_request_as_it_arrived() {
        let path = std::env::temp_dir().join(format!(
            "ecs-emulator-reqlog-{}-{}.jsonl",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = EmulatorConfig {
            request_log: Some(path.clone()),
            ..Default::default()
        };
        tokio::spawn(crate::serve(listener, cfg, std::future::pending()));
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(
                b"POST /?Action=DescribeInstances&a=%20+&b= HTTP/1.1\r\nHost: h:1\r\n\
                  X-Odd: \xff\xfe\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                  Content-Length: 5\r\nConnection: close\r\n\r\nk=v+w",
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(answer.contains("MissingAuthenticationToken"), "{answer}");
        let log = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        let l = &lines[0];
        assert_eq!(l["seq"], 1);
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/");
        assert_eq!(l["query"], "Action=DescribeInstances&a=%20+&b=");
        assert_eq!(
            l["headers"],
            json!([
                ["host", "h:1"],
                ["x-odd", "//4=", "base64"],
                ["content-type", "application/x-www-form-urlencoded"],
                ["content-length", "5"],
                ["connection", "close"]
            ])
        );
        assert_eq!(l["body_base64"], "az12K3c=");
    }
}
