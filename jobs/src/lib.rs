//! Conveyor's library: the domain, the store, the channel and carrier
//! adapters, and the seven job handlers of the fulfillment pipeline
//! (`import -> reserve -> split -> rate -> render -> purchase -> commit`).

pub mod address;
pub mod allocation;
pub mod carrier;
pub mod channel;
pub mod error;
pub mod packing;
pub mod pdf;
pub mod rate_choice;
