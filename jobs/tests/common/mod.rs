//! Support for the crate's integration tests: a tiny HTTP server for the
//! adapter tests, which answers each request with the next canned reply and
//! records what it was sent, and fresh databases for the database tests.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (longer than the client's timeout:
    /// a call that never answers).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: None,
        }
    }

    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            delay: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

#[derive(Clone, Default)]
struct Shared {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

pub struct Server {
    pub base_url: String,
    shared: Shared,
}

impl Server {
    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Replies not used yet.
    pub fn unused(&self) -> usize {
        self.shared.replies.lock().unwrap().len()
    }
}

async fn answer(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default()
        .to_vec();
    shared.received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    });
    let next = shared.replies.lock().unwrap().pop_front();
    let Some(reply) = next else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("the test server has no more replies"))
            .unwrap();
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response.body(Body::from(reply.body)).unwrap()
}

/// Starts a server on a free port that answers with `replies`, in order.
pub async fn serve(replies: Vec<Reply>) -> Server {
    let shared = Shared::default();
    shared.replies.lock().unwrap().extend(replies);
    let app = Router::new().fallback(answer).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        base_url: format!("http://{addr}"),
        shared,
    }
}

/// `/work/shared/api`: the first `shared/api` folder found walking up from
/// this crate (the shared folder sits beside the checkout).
pub fn shared_api_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared").join("api"))
        .find(|candidate| candidate.is_dir())
        .expect("no shared/api folder above the crate")
}

/// One recorded request and its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub uri: String,
    pub request_body: String,
    pub status: u16,
    pub response_body: String,
}

/// The exchanges of one EasyPost cassette (`easypost-recorded/<name>.yaml`).
pub fn cassette(name: &str) -> Vec<Exchange> {
    let path = shared_api_dir()
        .join("easypost-recorded")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_cassette(&text)
}

pub fn parse_cassette(text: &str) -> Vec<Exchange> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("cassette is YAML");
    let string = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_string();
    doc["interactions"]
        .as_sequence()
        .expect("cassette has interactions")
        .iter()
        .map(|i| Exchange {
            method: string(&i["request"]["method"]),
            uri: string(&i["request"]["uri"]),
            request_body: string(&i["request"]["body"]),
            status: i["response"]["status"]["code"]
                .as_u64()
                .expect("response status code") as u16,
            response_body: string(&i["response"]["body"]["string"]),
        })
        .collect()
}

/// Every cassette in `easypost-recorded/`, by file name.
pub fn all_cassettes() -> Vec<(String, Vec<Exchange>)> {
    let dir = shared_api_dir().join("easypost-recorded");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, parse_cassette(&std::fs::read_to_string(&p).unwrap()))
        })
        .collect()
}

/// Standard base64, for checking Basic auth headers.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The PostgreSQL server the database tests make their databases on:
/// `CONVEYOR_TEST_DATABASE_URL`, else the machine's on 5432.
pub fn server_url() -> String {
    std::env::var("CONVEYOR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A pool of `connections` on a new, migrated database named after
/// `prefix`.
pub async fn fresh_pool(prefix: &str, connections: u32) -> sqlx::PgPool {
    let url = conveyor_jobs::db::fresh_database(&server_url(), prefix)
        .await
        .unwrap();
    conveyor_jobs::db::connect(&url, connections).await.unwrap()
}
