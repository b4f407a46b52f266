//! The operator: the `StarRocksSink` controller (and, with it, the admission webhook).

pub mod reconcile;
