//! Conveyor's library: the domain, the store, the channel and carrier
//! adapters, and the seven job handlers of the fulfillment pipeline
//! (`import -> reserve -> split -> rate -> render -> purchase -> commit`).
//!
//! Each job's module holds its payload, its idempotency key and its
//! handler; `runner` runs them on their queues and maps their errors onto
//! retries and dead letters in one place.

pub mod address;
pub mod allocation;
pub mod breaker;
pub mod cancel;
pub mod carrier;
pub mod catalog;
pub mod channel;
pub mod commit;
pub mod crash;
pub mod db;
pub mod dead_letter;
pub mod dlq_http;
pub mod error;
pub mod import;
pub mod in_call;
pub mod leader;
pub mod limiter;
pub mod metrics;
pub mod ops_http;
pub mod package;
pub mod packing;
pub mod pdf;
pub mod process;
pub mod purchase;
pub mod queue;
pub mod rate;
pub mod rate_choice;
pub mod raw;
pub mod redis_link;
pub mod render;
pub mod replan;
pub mod reserve;
pub mod retention;
pub mod retry;
pub mod runner;
pub mod scheduler;
pub mod settings;
pub mod split;
pub mod state;
pub mod stats;
pub mod stock;
