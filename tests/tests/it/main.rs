//! One test binary for the workspace-level tests (one link, one `spawn_app`).

mod backlog_scale;
mod bad_input;
mod dlq;
mod edits;
mod idempotency;
mod import_lease;
mod pipeline;
mod retention;
mod retries;
