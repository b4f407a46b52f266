//! Types shared by the loader's configuration and the `StarRocksSink` resource.

pub mod config;
pub mod pod_contract;
pub mod resource;
pub mod sink;
pub mod units;

pub use config::{validate_sink, ConfigError, ConfigIssue, LoaderConfig};
pub use resource::{
    CredentialsSecretRef, SidecarSpec, StarRocksSink, StarRocksSinkSpec, StarRocksSinkStatus,
};
pub use sink::{
    Acks, FlushSpec, Format, MergeCommitSpec, RetrySpec, SinkSpec, SpoolSync, StarRocksSpec,
};
pub use units::{ByteSize, HumanDuration};
