//! Stream Load: the client, labels, the response classifier and the retry policy that
//! delivers one batch exactly once.

pub mod body;
pub mod client;
pub mod delivery;
pub mod label;
pub mod merge;
pub mod response;
pub mod transport;

pub use client::StreamLoadClient;
pub use delivery::{deliver, deliver_from, Attempt, Delivered, Start};
pub use label::LabelGen;
pub use response::{classify, LoadState, Verdict};
