//! The durable spool (`spoolDir`): accepted records are appended to segment files before
//! they count as accepted, a batch's label is written before its first send, and a
//! segment is deleted once every batch in it has its verdict. On start, sealed batches are
//! resolved with `get_load_state` under the same label and unsealed records form new
//! batches. This module holds the pieces built so far; see [`segment`] for the format.

pub mod segment;
pub mod store;
