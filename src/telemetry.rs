//! What the loader and the controller share for observability: a lock-free histogram in
//! Prometheus form, and the small HTTP server for `/metrics`, `/healthz` and `/readyz`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http1::{response, Conn};

/// Upper bounds, in seconds, of the duration histograms.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A duration histogram with fixed buckets; updates are plain atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        for (bucket, bound) in self.buckets.iter().zip(DURATION_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name`; `labels` is either
    /// empty or `key="value",` pairs each ending in a comma.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{bound}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let bare = labels.trim_end_matches(',');
        let _ = writeln!(
            out,
            "{name}_sum{{{bare}}} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{bare}}} {count}");
    }
}

/// Prometheus text exposition, written family by family: the one renderer behind the
/// loader's, the controller's and the webhook's `/metrics`.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample, `name{k="v",...} value`.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut Self {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        self
    }

    /// A histogram's samples (the family is started by the caller).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let prefix: String = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\","))
            .collect();
        h.render(&mut self.out, name, &prefix);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Produces the `/metrics` text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// How long a connection may sit idle between requests.
const IDLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves `/metrics` (from `render`), `/healthz` (the process runs) and `/readyz`
/// (`ready` is set) until `stop`.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = crate::accept::AcceptBackoff::new("metrics");
    while let Some((stream, _)) = backoff.next(&stop, || listener.accept()).await {
        let render = render.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut conn = Conn::new(stream);
            // Scrapers keep connections alive; one idle past this is closed.
            while let Ok(Ok(Some(req))) =
                tokio::time::timeout(IDLE_CONNECTION, conn.read_request_head()).await
            {
                let reply = match req.path() {
                    "/metrics" => response(
                        200,
                        "OK",
                        &[("Content-Type", "text/plain; version=0.0.4")],
                        render().as_bytes(),
                    ),
                    "/healthz" => response(200, "OK", &[], b"ok\n"),
                    "/readyz" if ready.load(Relaxed) => response(200, "OK", &[], b"ready\n"),
                    "/readyz" => response(503, "Service Unavailable", &[], b"not ready\n"),
                    _ => response(
                        404,
                        "Not Found",
                        &[],
                        b"not found; try /metrics, /healthz or /readyz\n",
                    ),
                };
                if conn.write_all(&reply).await.is_err() || req.headers.wants_close() {
                    break;
                }
            }
        });
    }
}

/// Binds a metrics address; the error names `key` (the setting or flag) and what to do.
pub async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{key} {addr}: cannot listen ({e}); pick a free address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_prometheus_text() {
        let h = Histogram::default();
        h.observe(0.02);
        let mut out = Exposition::default();
        out.family("x_total", "counter", "Things.")
            .sample("x_total", &[("sink", "a"), ("result", "ok")], 3)
            .family("x_seconds", "histogram", "Time.")
            .histogram("x_seconds", &[("sink", "a")], &h);
        let text = out.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[..5],
            [
                "# HELP x_total Things.",
                "# TYPE x_total counter",
                "x_total{sink=\"a\",result=\"ok\"} 3",
                "# HELP x_seconds Time.",
                "# TYPE x_seconds histogram",
            ]
        );
        assert!(lines.contains(&"x_seconds_bucket{sink=\"a\",le=\"0.01\"} 0"));
        assert!(lines.contains(&"x_seconds_bucket{sink=\"a\",le=\"0.025\"} 1"));
        assert!(lines.contains(&"x_seconds_bucket{sink=\"a\",le=\"+Inf\"} 1"));
        assert!(lines.contains(&"x_seconds_count{sink=\"a\"} 1"));
    }
}
