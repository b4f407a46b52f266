//! `starsink dev-endpoint`: the local Stream Load endpoint as a process of its own, so a
//! newcomer can point a loader at it, and the end-to-end suite can deploy it into a
//! cluster in place of StarRocks. It prints each load as it happens; what was loaded can
//! be read back over HTTP (`/dev/summary`, `/dev/loads`, `/dev/rows?table=DB.TABLE` on
//! the FE port).

use std::net::SocketAddr;

use super::{DevEndpoint, EndpointConfig, Faults};

/// `starsink dev-endpoint` options.
#[derive(Clone, Debug, clap::Args)]
pub struct DevEndpointArgs {
    /// Where the FE listens (Stream Load, `get_load_state`, and `/dev/...`).
    #[arg(long, default_value = "127.0.0.1:8030")]
    pub fe_addr: SocketAddr,
    /// Where the BE listens (the body of each load).
    #[arg(long, default_value = "127.0.0.1:8040")]
    pub be_addr: SocketAddr,
    /// `host:port` the FE redirects loads to (default: the BE's address; when the BE
    /// listens on every interface, the host the client reached the FE by, with the BE's
    /// port, which is what a Kubernetes Service needs).
    #[arg(long)]
    pub advertise_be: Option<String>,
    /// The user loads must authenticate as.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// The password loads must authenticate with (default: empty).
    #[arg(long, env = "STARSINK_DEV_PASSWORD", default_value = "")]
    pub password: String,
    /// Fault: this fraction of loads fails with a transient error (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub fail: f64,
    /// Fault: this fraction of loads is refused with StarRocks' "too many versions"
    /// (backpressure: the loader retries later and widens its flush interval).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub backpressure: f64,
    /// Fault: this fraction of loads is answered 503 without loading.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub unavailable: f64,
    /// Fault: this fraction of loads is committed, then the connection is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub commit_then_drop: f64,
    /// Fault: this fraction of loads is committed and answered `Publish Timeout`.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub publish_timeout: f64,
    /// Fault: this fraction of loads is refused for bad data (not retryable).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub refuse: f64,
    /// Fault: this fraction of loads is answered after `--slow-by`.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub slow: f64,
    #[arg(long, default_value = "2s")]
    pub slow_by: crate::api::HumanDuration,
    /// Read each load's body at most this many bytes per second (e.g. `120MiB`): a BE that
    /// drains slowly, so the loader's sends wait on TCP flow control.
    #[arg(long)]
    pub be_read_rate: Option<crate::api::ByteSize>,
    /// Fault (a broken BE or proxy): this fraction of loads is answered `Success` before
    /// the body is sent, and nothing is loaded.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub early_success: f64,
    /// Fault (a body cut on the way): this fraction of loads commits half of its rows and
    /// answers `Success` counting those.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub short_body: f64,
    /// StarRocks' `tablet_max_versions`: loads to a table with this many versions not
    /// yet compacted are refused with "too many versions".
    #[arg(long, default_value_t = 1000)]
    pub max_versions: u32,
    /// Versions compaction merges away per second, per table.
    #[arg(long, default_value_t = 50.0)]
    pub compaction_rate: f64,
    /// StarRocks' `max_running_txn_num_per_db`.
    #[arg(long, default_value_t = 1000)]
    pub max_running_txns: u32,
    /// StarRocks' `label_keep_max_num`: finished labels remembered (default: all).
    #[arg(long)]
    pub label_keep_max_num: Option<usize>,
    /// Seed of the fault draws, to repeat a run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve TLS with this certificate (PEM, the chain), with `--tls-key`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Which listeners serve TLS: `both`, `fe` (the BE plain: a redirect from https to
    /// http, which a loader refuses unless allowed), or `be`.
    #[arg(long, default_value = "both", value_parser = ["both", "fe", "be"])]
    pub tls_on: String,
}

/// The TLS settings `--tls-cert`, `--tls-key` and `--tls-on` ask for.
fn tls(args: &DevEndpointArgs) -> Result<Option<super::EndpointTls>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(Some(super::EndpointTls {
        config: std::sync::Arc::new(config),
        fe: args.tls_on != "be",
        be: args.tls_on != "fe",
    }))
}

fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{s}` is not a probability; write a number from 0 to 1, e.g. 0.2"
        )),
    }
}

/// Runs the endpoint until SIGTERM or SIGINT; returns the exit code (2: cannot listen).
pub async fn run(args: DevEndpointArgs) -> i32 {
    let tls = match tls(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let config = EndpointConfig {
        tls,
        user: args.user.clone(),
        password: args.password.clone(),
        faults: Faults {
            commit_then_drop: args.commit_then_drop,
            fail: args.fail,
            unavailable: args.unavailable,
            publish_timeout: args.publish_timeout,
            refuse: args.refuse,
            slow: args.slow,
            slow_by: args.slow_by.0,
            early_success: args.early_success,
            backpressure: args.backpressure,
            short_body: args.short_body,
        },
        keep_rows: true,
        seed: args.seed,
        limits: super::ServerLimits {
            max_versions: args.max_versions,
            compaction_per_sec: args.compaction_rate,
            max_running_txns: args.max_running_txns,
            label_keep_max_num: args.label_keep_max_num,
        },
        be_read_rate: args.be_read_rate.map(|r| r.0),
    };
    let endpoint =
        match DevEndpoint::start_on(config, args.fe_addr, args.be_addr, args.advertise_be).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!(
                "error: cannot listen on --fe-addr {} / --be-addr {} ({e}); pick free addresses",
                args.fe_addr, args.be_addr
            );
                return 2;
            }
        };
    // The addresses as bound: port 0 in `--fe-addr`/`--be-addr` means any free port.
    let fe = endpoint.fe_url();
    println!(
        "Stream Load endpoint: FE {fe} (put it in feEndpoints), BE {}, user {}",
        endpoint.be_addr(),
        args.user
    );
    println!("what was loaded: curl {fe}/dev/summary  (also /dev/loads, /dev/rows?table=DB.TABLE)");
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            loads = endpoint.loads_after(seen) => {
                seen += loads.len();
                for l in loads {
                    println!("load label={} table={} rows={} bytes={} outcome={}", l.label, l.table, l.rows, l.body_bytes, l.status);
                }
            }
        }
    }
    println!(
        "stopping: {} row(s) committed in {seen} load(s)",
        endpoint.committed_rows()
    );
    0
}

/// Resolves on SIGTERM or SIGINT (or at once if the handlers cannot be installed).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
