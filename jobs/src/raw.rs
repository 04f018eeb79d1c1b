//! Jobs reach the handler as the raw bytes stored in the queue.
//!
//! apalis-postgres decodes every task's payload with its JSON codec before
//! the handler runs; a payload that is not JSON never reaches the handler, so
//! it can be neither dead-lettered nor kept: the worker's stream reports a
//! decoding error and the task stays claimed until it is orphaned, then the
//! same happens again, forever. [`RawPayloads`] wraps the backend so that the
//! handler receives the stored bytes as they are ([`RawPayload`]) and decides
//! itself: a payload it cannot read is a permanent failure, recorded once as
//! a dead letter with its bytes kept.

use std::convert::Infallible;
use std::task::{Context, Poll};

use apalis_core::backend::codec::Codec;
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::worker::context::WorkerContext;

/// A job's payload exactly as stored in `apalis.jobs.job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload(pub Vec<u8>);

/// The identity codec: bytes in, the same bytes out; it cannot fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec<RawPayload> for RawCodec {
    type Error = Infallible;
    type Compact = Vec<u8>;

    fn encode(&self, val: &RawPayload) -> Result<Vec<u8>, Infallible> {
        Ok(val.0.clone())
    }

    fn decode(&self, val: &Vec<u8>) -> Result<RawPayload, Infallible> {
        Ok(RawPayload(val.clone()))
    }
}

/// A backend whose tasks are handed to the worker as [`RawPayload`]s; all
/// else (fetching, heartbeats, acknowledgements) is the wrapped backend's.
#[derive(Debug, Clone)]
pub struct RawPayloads<B> {
    inner: B,
    codec: RawCodec,
}

impl<B> RawPayloads<B> {
    pub fn new(inner: B) -> Self {
        RawPayloads {
            inner,
            codec: RawCodec,
        }
    }
}

impl<B: Backend> Backend for RawPayloads<B> {
    type Task = B::Task;
    type Error = B::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.inner.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_close(cx, worker)
    }
}

impl<B: BackendConfig> BackendConfig for RawPayloads<B> {
    type Args = RawPayload;
    type Id = B::Id;
    type Kind = B::Kind;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &Self::Config {
        self.inner.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        self.inner.middleware(worker)
    }
}

impl<B> WireFormatBackend for RawPayloads<B> {
    type Codec = RawCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &RawCodec {
        &self.codec
    }
}

/// Reads a payload as JSON; what it cannot read is described for the dead
/// letter (with a short excerpt of the bytes, which are kept in full).
pub fn parse_json(payload: &RawPayload) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&payload.0).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&payload.0)
            .chars()
            .take(80)
            .collect();
        format!(
            "payload cannot be read as JSON ({e}); {} bytes, starting {shown:?}",
            payload.0.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_keeps_any_bytes_as_they_are() {
        let bytes = vec![0xff, 0xfe, b'{', 0x00, b'x'];
        let decoded = RawCodec.decode(&bytes).unwrap();
        assert_eq!(decoded.0, bytes);
        assert_eq!(RawCodec.encode(&decoded).unwrap(), bytes);
    }

    #[test]
    fn unreadable_json_is_described_with_its_size_and_start() {
        let err = parse_json(&RawPayload(b"\xff\xfenot json at all".to_vec())).unwrap_err();
        assert!(err.contains("cannot be read as JSON"), "{err}");
        assert!(err.contains("17 bytes"), "{err}");
        assert!(err.contains("not json"), "{err}");
        let ok = parse_json(&RawPayload(br#"{"order_id": 7}"#.to_vec())).unwrap();
        assert_eq!(ok["order_id"], 7);
    }
}
