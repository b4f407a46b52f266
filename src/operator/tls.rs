//! Keeps the webhook's TLS material current without cert-manager: the CA and serving
//! certificate live in one Secret shared by the replicas; the CA bundle goes into the
//! MutatingWebhookConfiguration; the serving certificate is swapped into the running
//! server. With cert-manager, certificates are read from a mounted directory instead and
//! reloaded when they change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::certs::{plan, renew, service_dns_names, Renewal, TlsMaterial, Validity};
use super::controller::FIELD_MANAGER;
use super::webhook::CertResolver;
use super::{kube_err, KubeCallError};

/// Where the TLS material lives and what it serves.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle`s are kept current.
    pub webhook_config: String,
    pub service: String,
    pub validity: Validity,
    /// Owner of the Secret (the controller's Deployment), so it goes with the release.
    pub owner: Option<OwnerReference>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Kube(#[from] KubeCallError),
    #[error(transparent)]
    Cert(#[from] super::certs::CertError),
    #[error("{0}")]
    Load(String),
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const NOT_AFTER: &str = "starsink.io/not-after";

/// Reads the material from the Secret, if it is all there.
pub fn from_secret(secret: &Secret) -> Option<TlsMaterial> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let times: Vec<i64> = secret
        .metadata
        .annotations
        .as_ref()?
        .get(NOT_AFTER)?
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    // ca, cert, then one per bundle entry
    let (ca_not_after, cert_not_after) = (*times.first()?, *times.get(1)?);
    Some(TlsMaterial {
        ca_bundle: text("ca-bundle.crt")?,
        ca_cert: text("ca.crt")?,
        ca_key: text("ca.key")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
        ca_not_after,
        cert_not_after,
        bundle_not_after: times[2..].to_vec(),
    })
}

fn to_secret(m: &TlsMaterial, opts: &TlsOptions, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let times: Vec<String> = [m.ca_not_after, m.cert_not_after]
        .iter()
        .chain(m.bundle_not_after.iter())
        .map(|t| t.to_string())
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(opts.secret.clone()),
            namespace: Some(opts.namespace.clone()),
            resource_version,
            owner_references: opts.owner.clone().map(|o| vec![o]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "starsink".into(),
            )])),
            annotations: Some(BTreeMap::from([(NOT_AFTER.into(), times.join(","))])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca-bundle.crt".into(), bytes(&m.ca_bundle)),
            ("ca.crt".into(), bytes(&m.ca_cert)),
            ("ca.key".into(), bytes(&m.ca_key)),
            ("tls.crt".into(), bytes(&m.cert)),
            ("tls.key".into(), bytes(&m.key)),
        ])),
        ..Secret::default()
    }
}

/// Brings the Secret, the webhook configuration's CA bundle and the served certificate up
/// to date; returns when to look again, and the CA bundle now in force. Replicas race safely: the Secret is created or
/// replaced at a resourceVersion, and the loser re-reads.
pub async fn ensure(
    client: &Client,
    opts: &TlsOptions,
    resolver: &CertResolver,
) -> Result<(Duration, String), TlsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let names = service_dns_names(&opts.service, &opts.namespace);
    let mut attempts = 0;
    let material = loop {
        attempts += 1;
        let now = unix_now();
        let current = secrets
            .get_opt(&opts.secret)
            .await
            .map_err(kube_err(format!(
                "reading Secret {}/{}",
                opts.namespace, opts.secret
            )))?;
        let material = current.as_ref().and_then(from_secret);
        let renewal = plan(material.as_ref(), now, opts.validity);
        let next = match material {
            Some(m) if renewal == Renewal::Keep => {
                if owned_as_asked(current.as_ref(), opts) {
                    break m;
                }
                m
            }
            m => renew(m.as_ref(), renewal, &names, now, opts.validity)?,
        };
        let written = match &current {
            None => secrets
                .create(&post_params(), &to_secret(&next, opts, None))
                .await
                .map(|_| ()),
            Some(s) => secrets
                .replace(
                    &opts.secret,
                    &post_params(),
                    &to_secret(&next, opts, s.metadata.resource_version.clone()),
                )
                .await
                .map(|_| ()),
        };
        match written {
            Ok(()) => {
                tracing::info!(secret = %opts.secret, renewal = ?renewal, not_after = next.cert_not_after, "webhook certificate renewed");
                break next;
            }
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
            Err(e) => {
                let action = format!("writing Secret {}/{}", opts.namespace, opts.secret);
                return Err(kube_err(action)(e).into());
            }
        }
    };
    // Clients must trust the new CA before the server presents a certificate it signed.
    patch_ca_bundle(client, opts, &material.ca_bundle).await?;
    resolver
        .set(&material.cert, &material.key)
        .map_err(TlsError::Load)?;
    let now = unix_now();
    let third = i64::try_from(opts.validity.cert.as_secs() / 3).unwrap_or(i64::MAX);
    let due = (material.cert_not_after - third).min(
        material.ca_not_after - i64::try_from(opts.validity.ca.as_secs() / 3).unwrap_or(i64::MAX),
    );
    let wait = u64::try_from((due - now).max(1)).unwrap_or(1).min(3600);
    Ok((Duration::from_secs(wait), material.ca_bundle))
}

/// Sets every webhook's `clientConfig.caBundle` in the configuration, if it differs.
async fn patch_ca_bundle(client: &Client, opts: &TlsOptions, bundle: &str) -> Result<(), TlsError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api
        .get_opt(&opts.webhook_config)
        .await
        .map_err(kube_err(format!(
            "reading MutatingWebhookConfiguration {}",
            opts.webhook_config
        )))?
    else {
        tracing::warn!(config = %opts.webhook_config, "MutatingWebhookConfiguration not found; the chart creates it, and its caBundle is set once it exists");
        return Ok(());
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    for (i, w) in config.webhooks.iter().flatten().enumerate() {
        let current = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0));
        if current.as_deref() != Some(encoded.as_str()) {
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": encoded,
            }));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| TlsError::Load(format!("caBundle patch: {e}")))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&opts.webhook_config, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(kube_err(format!(
            "patching caBundle of {}",
            opts.webhook_config
        )))?;
    tracing::info!(config = %opts.webhook_config, "caBundle updated");
    Ok(())
}

/// Keeps the material current until `stop`, retrying failures after 10s. It also watches
/// the webhook configuration, so a configuration created after the controller started
/// (helm creates it after the Deployment), or one whose `caBundle` was overwritten, gets
/// the bundle at once rather than at the next renewal check.
pub async fn run(
    client: Client,
    opts: TlsOptions,
    resolver: Arc<CertResolver>,
    stop: CancellationToken,
) {
    let configs = watcher(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", opts.webhook_config)),
    )
    .applied_objects()
    .default_backoff();
    tokio::pin!(configs);
    let mut bundle = None;
    loop {
        let wait = match ensure(&client, &opts, &resolver).await {
            Ok((wait, served)) => {
                bundle = Some(served);
                wait
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook TLS: cannot bring the certificate up to date; retrying in 10s");
                Duration::from_secs(10)
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut sleep => break,
                next = configs.next() => match next {
                    Some(Ok(config)) if !bundle_is(&config, bundle.as_deref()) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::debug!(error = %e, "webhook configuration watch"),
                    None => return,
                },
            }
        }
    }
}

/// Whether every webhook of `config` carries `bundle` (PEM) as its `caBundle`.
fn bundle_is(config: &MutatingWebhookConfiguration, bundle: Option<&str>) -> bool {
    let Some(bundle) = bundle else { return false };
    config.webhooks.iter().flatten().all(|w| {
        w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle.as_bytes())
    })
}

/// Whether the Secret already has the owner `opts` asks for (or none is asked for).
fn owned_as_asked(secret: Option<&Secret>, opts: &TlsOptions) -> bool {
    let Some(owner) = &opts.owner else {
        return true;
    };
    secret.is_some_and(|s| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner.uid)
    })
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// cert-manager mode: serves `tls.crt`/`tls.key` from `dir`, reloading them when they
/// change (checked every `every`).
pub async fn watch_dir(
    dir: PathBuf,
    resolver: Arc<CertResolver>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut seen: Option<(SystemTime, SystemTime)> = None;
    loop {
        match load_dir(&dir, &resolver, &mut seen) {
            Ok(true) => tracing::info!(dir = %dir.display(), "webhook certificate loaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "webhook certificate not loaded")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Loads the directory's certificate if it changed since `seen`; `Ok(true)` if loaded.
pub fn load_dir(
    dir: &Path,
    resolver: &CertResolver,
    seen: &mut Option<(SystemTime, SystemTime)>,
) -> Result<bool, String> {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let modified = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let stamp = (modified(&cert)?, modified(&key)?);
    if *seen == Some(stamp) {
        return Ok(false);
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    resolver.set(&read(&cert)?, &read(&key)?)?;
    *seen = Some(stamp);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::certs::{renew, Renewal, Validity};

    fn material() -> TlsMaterial {
        renew(
            None,
            Renewal::NewCa,
            &service_dns_names("w", "ns"),
            unix_now(),
            Validity::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_mounted_certificate_is_loaded_once_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = CertResolver::default();
        let mut seen = None;
        assert!(
            load_dir(dir.path(), &resolver, &mut seen).is_err(),
            "nothing mounted yet"
        );
        let write = |m: &TlsMaterial| {
            std::fs::write(dir.path().join("tls.crt"), &m.cert).unwrap();
            std::fs::write(dir.path().join("tls.key"), &m.key).unwrap();
        };
        write(&material());
        assert_eq!(load_dir(dir.path(), &resolver, &mut seen), Ok(true));
        assert_eq!(load_dir(dir.path(), &resolver, &mut seen), Ok(false));
        // cert-manager renews: new files, new modification times.
        let first = seen;
        while seen == first {
            write(&material());
            load_dir(dir.path(), &resolver, &mut seen).unwrap();
        }
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        assert!(
            load_dir(dir.path(), &resolver, &mut seen).is_err(),
            "a broken key is reported"
        );
    }

    #[test]
    fn the_secret_round_trips_the_material() {
        let m = material();
        let opts = TlsOptions {
            namespace: "ns".into(),
            secret: "tls".into(),
            webhook_config: "starsink".into(),
            service: "w".into(),
            validity: Validity::default(),
            owner: None,
        };
        assert_eq!(from_secret(&to_secret(&m, &opts, None)), Some(m));
    }
}
