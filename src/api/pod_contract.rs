//! The pod contract: every label, annotation, name, path and variable that starsink reads
//! from or writes into a pod and the objects around it, used by the CRD's projection into
//! loader settings, injection, the webhook and the controller. Each derived name fits the limit Kubernetes sets
//! for its kind, shortened deterministically (a cut name plus a hash of the whole) when it
//! must be, so no sink name the CRD allows can make the API server refuse a pod.
//!
//! The limits, from Kubernetes' `apimachinery/pkg/util/validation/validation.go`:
//! a DNS-1123 label (container, volume and port-less names) is at most 63 characters of
//! `[a-z0-9-]`, starting and ending with a letter or digit; a DNS-1123 subdomain (ConfigMap
//! and Secret names) at most 253; an IANA service name (container port names) at most 15,
//! with at least one letter and no `--`.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// The label a pod opts in with (the webhook's objectSelector).
pub const INJECT_LABEL: &str = "starsink.io/inject";
/// The pod annotation listing the sinks it uses, comma-separated.
pub const SINKS_ANNOTATION: &str = "starsink.io/sinks";
/// Set on an injected pod, listing the sinks its loader serves.
pub const INJECTED_ANNOTATION: &str = "starsink.io/injected";
/// Set on an injected pod: the hash of what injection added (the loader container, its
/// volumes, the grace period), to tell later whether injection would add the same now.
pub const INJECTED_HASH_ANNOTATION: &str = "starsink.io/injected-hash";
/// `skip`: start the pod without sinks that do not exist, instead of denying it.
pub const ON_MISSING_ANNOTATION: &str = "starsink.io/on-missing-sink";
/// Names a volume of the pod's own to spool on instead of an `emptyDir`.
pub const SPOOL_VOLUME_ANNOTATION: &str = "starsink.io/spool-volume";
/// The ConfigMap annotation carrying the hash of its content.
pub const HASH_ANNOTATION: &str = "starsink.io/config-hash";
/// The label naming the sink a ConfigMap belongs to (a sink name fits a label value).
pub const SINK_LABEL: &str = "starsink.io/sink";
/// The key of the loader's sink settings in the ConfigMap.
pub const CONFIG_KEY: &str = "sink.yaml";

/// The loader container's name.
pub const LOADER: &str = "starsink-loader";
/// The socket volume's name.
pub const SOCKETS_VOLUME: &str = "starsink-sockets";
/// The spool volume's name, when the injector adds one (an `emptyDir`).
pub const SPOOL_VOLUME: &str = "starsink-spool";
/// The name of the loader's `/metrics`, `/healthz` and `/readyz` port: an IANA service
/// name, so at most 15 characters.
pub const METRICS_PORT_NAME: &str = "starsink-http";

/// Longest DNS-1123 label: container, volume names; label values are held to it too.
pub const DNS_LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain: ConfigMap and Secret names.
pub const DNS_SUBDOMAIN_MAX: usize = 253;

/// `starsink-<sink>`: the ConfigMap holding a sink's loader settings.
pub fn config_map_name(sink: &str) -> String {
    fit(format!("starsink-{sink}"), DNS_SUBDOMAIN_MAX)
}

/// The volume that mounts a sink's ConfigMap into the loader.
pub fn config_volume(sink: &str) -> String {
    fit(format!("starsink-config-{sink}"), DNS_LABEL_MAX)
}

/// The volume that mounts a sink's credentials Secret into the loader.
pub fn credentials_volume(sink: &str) -> String {
    fit(format!("starsink-credentials-{sink}"), DNS_LABEL_MAX)
}

/// The volume that mounts the CA certificates a sink trusts into the loader.
pub fn tls_volume(sink: &str) -> String {
    fit(format!("starsink-tls-{sink}"), DNS_LABEL_MAX)
}

/// Where a sink's CA certificates are mounted in the loader.
pub const TLS_DIR: &str = "/etc/starsink/tls";

/// The volume that mounts a sink's client certificate Secret into the loader.
pub fn tls_client_volume(sink: &str) -> String {
    fit(format!("starsink-tls-client-{sink}"), DNS_LABEL_MAX)
}

/// Where a sink's client certificate Secret (`tls.crt`, `tls.key`) is mounted.
pub fn tls_client_dir(sink: &str) -> String {
    format!("/etc/starsink/tls-client/{sink}")
}

/// Where a sink's CA certificates are mounted in the loader, one directory per sink.
pub fn tls_dir(sink: &str) -> String {
    format!("{TLS_DIR}/{sink}")
}

/// The file of a sink's CA certificates in the loader.
pub fn tls_ca_file(sink: &str) -> String {
    format!("{}/ca.crt", tls_dir(sink))
}

/// Where the sidecar's sockets live in a pod (an `emptyDir` shared with the apps).
pub const SOCKET_DIR: &str = "/var/run/starsink";
/// Where a sink's credentials Secret is mounted in the loader, one directory per sink.
pub const SECRET_DIR: &str = "/etc/starsink/credentials";
/// Where the loader's spool volume is mounted; each sink spools in a directory of its own.
pub const SPOOL_DIR: &str = "/var/lib/starsink/spool";
/// Where a sink's loader settings (its ConfigMap) are mounted in the loader.
pub const SINK_CONFIG_DIR: &str = "/etc/starsink/sinks";
/// The loader's variable holding its pod's name: the spool volume is mounted at
/// `<pod name>/` of the volume (`subPathExpr`), so two pods sharing a volume never share
/// a spool.
pub const POD_NAME_ENV: &str = "STARSINK_POD_NAME";
/// The loader's non-root user (distroless `nonroot`).
pub const LOADER_UID: i64 = 65532;

/// A sink's socket in the pod, on the shared socket volume.
pub fn socket_path(sink: &str) -> String {
    format!("{SOCKET_DIR}/{sink}.sock")
}

/// Where a sink's credentials Secret is mounted in the loader.
pub fn credentials_dir(sink: &str) -> String {
    format!("{SECRET_DIR}/{sink}")
}

/// The file holding a sink's password in the loader: `key` of its mounted Secret.
pub fn password_file(sink: &str, key: &str) -> String {
    format!("{}/{key}", credentials_dir(sink))
}

/// A sink's spool directory in the loader.
pub fn spool_dir(sink: &str) -> String {
    format!("{SPOOL_DIR}/{sink}")
}

/// Where a sink's ConfigMap is mounted in the loader, and the loader's `--sink-file`.
pub fn sink_config_dir(sink: &str) -> String {
    format!("{SINK_CONFIG_DIR}/{sink}")
}

/// The sinks a pod asks for in its `starsink.io/sinks` annotation, if it opted in with
/// the `starsink.io/inject: "true"` label.
pub fn requested_sinks(pod: &Pod) -> Vec<String> {
    let opted_in = pod.labels().get(INJECT_LABEL).map(String::as_str) == Some("true");
    if !opted_in {
        return Vec::new();
    }
    pod.annotations()
        .get(SINKS_ANNOTATION)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across releases and platforms, which is
/// all a change detector (the ConfigMap's hash) and a name shortener need.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `STARSINK_SOCKET_<SINK>`: upper-cased, `-` as `_`. A sink name is `[a-z0-9-]`, so the
/// result is a C identifier, valid as an env var name on every Kubernetes version (no
/// length limit applies to those).
pub fn socket_env_name(sink: &str) -> String {
    format!("STARSINK_SOCKET_{}", sink.to_uppercase().replace('-', "_"))
}

/// `name` itself when it has at most `max` characters; otherwise its first part and a
/// hash of the whole, `max` long, ending in a letter or digit. Two names that differ only
/// past the cut get different results (their hashes differ). `name` is ASCII here: every
/// name it is given is built from a sink name, `[a-z0-9-]`.
pub fn fit(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let hash = &content_hash(name.as_bytes())[..8];
    let keep = max.saturating_sub(hash.len() + 1);
    let head = name
        .get(..keep)
        .unwrap_or(&name)
        .trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= DNS_LABEL_MAX
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn derived_names_fit_their_kinds_for_every_sink_name_the_crd_allows() {
        let longest = "a".repeat(63);
        let dashed = format!("{}-{}", "x1".repeat(20), "9-9".repeat(7));
        let cut_at_dash = format!("{}-{}", "b".repeat(41), "c".repeat(21));
        for sink in ["o", "orders", "0rders-2", &longest, &dashed, &cut_at_dash] {
            for name in [config_volume(sink), credentials_volume(sink)] {
                assert!(is_dns_label(&name), "{name:?} for sink {sink:?}");
            }
            assert!(config_map_name(sink).len() <= DNS_SUBDOMAIN_MAX);
        }
    }

    #[test]
    fn short_names_are_kept_and_long_ones_cut_with_a_hash() {
        assert_eq!(credentials_volume("orders"), "starsink-credentials-orders");
        let long = "a".repeat(63);
        let v = credentials_volume(&long);
        assert_eq!(v.len(), 63);
        assert!(v.starts_with("starsink-credentials-aaaa"), "{v}");
        assert_eq!(v, credentials_volume(&long), "deterministic");
    }

    #[test]
    fn two_long_names_with_a_shared_prefix_stay_apart() {
        let a = format!("{}-a", "shared".repeat(10));
        let b = format!("{}-b", "shared".repeat(10));
        assert_ne!(credentials_volume(&a), credentials_volume(&b));
        assert_ne!(config_volume(&a), config_volume(&b));
    }

    #[test]
    fn the_metrics_port_name_is_an_iana_service_name() {
        assert!(METRICS_PORT_NAME.len() <= 15);
        assert!(is_dns_label(METRICS_PORT_NAME) && !METRICS_PORT_NAME.contains("--"));
    }
}
