//! The webhook's TLS material without cert-manager: a CA and a serving certificate made
//! with rcgen, and the pure decision of when to renew which. Renewal starts when a third of
//! a certificate's life is left; a new CA joins the bundle beside the old one, so clients
//! that still trust only the old CA keep working until the old CA expires.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a time outside the certificate range: {0}")]
    Time(String),
}

/// The CA and serving certificate, as kept in the shared Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// PEM of every CA a client should trust (the current one last).
    pub ca_bundle: String,
    /// The current CA (PEM) and its key.
    pub ca_cert: String,
    pub ca_key: String,
    /// The serving certificate (PEM) and its key.
    pub cert: String,
    pub key: String,
    /// Unix seconds after which the current CA and the serving certificate expire.
    pub ca_not_after: i64,
    pub cert_not_after: i64,
    /// Expiry of each CA in `ca_bundle`, in the same order.
    pub bundle_not_after: Vec<i64>,
}

/// Lifetimes of the CA and the serving certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub ca: Duration,
    pub cert: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: Duration::from_secs(5 * 365 * 24 * 3600),
            cert: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// What to do with the TLS material now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// A new serving certificate from the current CA.
    NewCert,
    /// A new CA (kept beside the old one in the bundle) and a new serving certificate.
    NewCa,
}

/// Decides the renewal due at `now` (unix seconds).
pub fn plan(material: Option<&TlsMaterial>, now: i64, validity: Validity) -> Renewal {
    let Some(m) = material else {
        return Renewal::NewCa;
    };
    let third = |d: Duration| i64::try_from(d.as_secs() / 3).unwrap_or(i64::MAX);
    if m.ca_not_after - now <= third(validity.ca) {
        return Renewal::NewCa;
    }
    if m.cert_not_after - now > third(validity.cert) {
        return Renewal::Keep;
    }
    // A CA only signs once clients have had time to learn it from the bundle, unless the
    // serving certificate has run out.
    let ca_created = m.ca_not_after - i64::try_from(validity.ca.as_secs()).unwrap_or(i64::MAX);
    if now - ca_created >= settle(validity) || m.cert_not_after <= now {
        Renewal::NewCert
    } else {
        Renewal::Keep
    }
}

/// How long a new CA is only published (in the bundle) before it signs: a sixth of the
/// serving certificate's life, at least 1s.
pub fn settle(validity: Validity) -> i64 {
    i64::try_from(validity.cert.as_secs() / 6)
        .unwrap_or(i64::MAX)
        .max(1)
}

const CA_NAME: &str = "starsink webhook CA";

fn ca_params(now: i64, validity: Duration) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut p, now, validity)?;
    Ok(p)
}

fn set_validity(p: &mut CertificateParams, now: i64, validity: Duration) -> Result<(), CertError> {
    let at =
        |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| CertError::Time(e.to_string()));
    // A minute of slack for clocks that run behind.
    p.not_before = at(now - 60)?;
    p.not_after = at(now + i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2))?;
    Ok(())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// A CA: its certificate and key (PEM), and when it expires.
struct Ca {
    cert: String,
    key: String,
    not_after: i64,
}

/// Makes whatever `renewal` calls for, serving `dns_names`, at `now`.
pub fn renew(
    current: Option<&TlsMaterial>,
    renewal: Renewal,
    dns_names: &[String],
    now: i64,
    validity: Validity,
) -> Result<TlsMaterial, CertError> {
    let (ca, mut bundle) = match (renewal, current) {
        (Renewal::Keep, Some(m)) => return Ok(m.clone()),
        (Renewal::NewCert, Some(m)) => {
            let ca = Ca {
                cert: m.ca_cert.clone(),
                key: m.ca_key.clone(),
                not_after: m.ca_not_after,
            };
            (ca, bundle_entries(m))
        }
        _ => new_ca(current, now, validity)?,
    };
    if !bundle.iter().any(|(pem, _)| *pem == ca.cert) {
        bundle.push((ca.cert.clone(), ca.not_after));
    }
    let bundle_pem = bundle.iter().map(|(p, _)| p.as_str()).collect::<String>();
    let bundle_not_after: Vec<i64> = bundle.iter().map(|(_, t)| *t).collect();
    // A new CA is published first; the serving certificate signed by the old CA stays
    // until it is due, so clients that have not yet seen the new bundle keep working.
    let keep_cert = match (renewal, current) {
        (Renewal::NewCa, Some(m)) if m.cert_not_after > now => {
            Some((m.cert.clone(), m.key.clone(), m.cert_not_after))
        }
        _ => None,
    };
    let (cert, key, cert_not_after) = match keep_cert {
        Some(kept) => kept,
        None => serving_cert(&ca, dns_names, now, validity)?,
    };
    Ok(TlsMaterial {
        ca_bundle: bundle_pem,
        bundle_not_after,
        ca_cert: ca.cert,
        ca_key: ca.key,
        ca_not_after: ca.not_after,
        cert,
        key,
        cert_not_after,
    })
}

/// A new CA, and the bundle to publish with it: the current one's CAs that have not
/// expired stay trusted until they do.
fn new_ca(
    current: Option<&TlsMaterial>,
    now: i64,
    validity: Validity,
) -> Result<(Ca, Vec<(String, i64)>), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now, validity.ca)?.self_signed(&key)?;
    let kept = current
        .map(|m| {
            bundle_entries(m)
                .into_iter()
                .filter(|(_, not_after)| *not_after > now)
                .collect()
        })
        .unwrap_or_default();
    let ca = Ca {
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after: now + secs(validity.ca),
    };
    Ok((ca, kept))
}

/// A serving certificate for `dns_names` signed by `ca`, never outliving it: its PEM,
/// its key's PEM, and when it expires.
fn serving_cert(
    ca: &Ca,
    dns_names: &[String],
    now: i64,
    validity: Validity,
) -> Result<(String, String, i64), CertError> {
    let issuer = Issuer::new(ca_params(now, validity.ca)?, KeyPair::from_pem(&ca.key)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    let common_name = dns_names.first().cloned().unwrap_or_default();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let until_ca_expires = u64::try_from((ca.not_after - now).max(1)).unwrap_or(1);
    let cert_validity = validity.cert.min(Duration::from_secs(until_ca_expires));
    set_validity(&mut params, now, cert_validity)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), now + secs(cert_validity)))
}

/// The CAs of a bundle with their expiry.
fn bundle_entries(m: &TlsMaterial) -> Vec<(String, i64)> {
    let pems = split_pem(&m.ca_bundle);
    pems.into_iter()
        .zip(
            m.bundle_not_after
                .iter()
                .copied()
                .chain(std::iter::repeat(m.ca_not_after)),
        )
        .collect()
}

/// Splits concatenated PEM certificates.
pub fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(|p| p.trim_start().to_owned())
        .filter(|p| p.contains("BEGIN CERTIFICATE"))
        .map(|p| format!("{p}\n"))
        .collect()
}

/// The DNS names a webhook Service answers to.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn short() -> Validity {
        Validity {
            ca: Duration::from_secs(3000),
            cert: Duration::from_secs(300),
        }
    }

    #[test]
    fn nothing_yet_means_a_new_ca_then_nothing_until_a_third_of_a_life_is_left() {
        assert_eq!(plan(None, NOW, short()), Renewal::NewCa);
        let m = renew(
            None,
            Renewal::NewCa,
            &service_dns_names("w", "ns"),
            NOW,
            short(),
        )
        .unwrap();
        assert_eq!(m.cert_not_after, NOW + 300);
        assert_eq!(m.ca_not_after, NOW + 3000);
        assert_eq!(plan(Some(&m), NOW + 199, short()), Renewal::Keep);
        assert_eq!(plan(Some(&m), NOW + 200, short()), Renewal::NewCert);
        assert_eq!(plan(Some(&m), NOW + 2000, short()), Renewal::NewCa);
    }

    #[test]
    fn a_new_ca_is_published_before_it_signs() {
        let names = service_dns_names("w", "ns");
        let first = renew(None, Renewal::NewCa, &names, NOW, short()).unwrap();
        let cert = renew(Some(&first), Renewal::NewCert, &names, NOW + 1900, short()).unwrap();
        // The CA is due at NOW+2000: the bundle grows, the served certificate stays.
        let rotated = renew(Some(&cert), Renewal::NewCa, &names, NOW + 2000, short()).unwrap();
        assert_eq!(
            rotated.cert, cert.cert,
            "the old CA's certificate is still served"
        );
        assert_eq!(split_pem(&rotated.ca_bundle).len(), 2);
        // Its certificate falls due (a third of its life left) while the new CA is still
        // too fresh to sign...
        let mut due = rotated.clone();
        due.cert_not_after = NOW + 2090;
        let fresh = NOW + 2000 + settle(short()) - 1;
        assert_eq!(plan(Some(&due), fresh, short()), Renewal::Keep);
        // ...until the new CA has been published for a while,
        assert_eq!(plan(Some(&due), fresh + 1, short()), Renewal::NewCert);
        // or the served certificate runs out.
        let mut expiring = rotated.clone();
        expiring.cert_not_after = NOW + 2030;
        assert_eq!(plan(Some(&expiring), NOW + 2030, short()), Renewal::NewCert);
    }

    #[test]
    fn a_new_cert_keeps_the_ca_and_a_new_ca_joins_the_old_one_in_the_bundle() {
        let names = service_dns_names("w", "ns");
        let first = renew(None, Renewal::NewCa, &names, NOW, short()).unwrap();
        let second = renew(Some(&first), Renewal::NewCert, &names, NOW + 250, short()).unwrap();
        assert_eq!(second.ca_cert, first.ca_cert);
        assert_eq!(second.ca_bundle, first.ca_bundle);
        assert_ne!(second.cert, first.cert);
        let third = renew(Some(&second), Renewal::NewCa, &names, NOW + 2100, short()).unwrap();
        assert_ne!(third.ca_cert, first.ca_cert);
        let cas = split_pem(&third.ca_bundle);
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0].trim(), first.ca_cert.trim());
        // Once the old CA has expired it leaves the bundle.
        let fourth = renew(Some(&third), Renewal::NewCa, &names, NOW + 3100, short()).unwrap();
        assert_eq!(
            split_pem(&fourth.ca_bundle).len(),
            2,
            "third's CA and the new one"
        );
        assert!(!fourth.ca_bundle.contains(first.ca_cert.trim()));
    }

    #[test]
    fn the_serving_certificate_never_outlives_its_ca() {
        let names = service_dns_names("w", "ns");
        let v = Validity {
            ca: Duration::from_secs(100),
            cert: Duration::from_secs(1000),
        };
        let m = renew(None, Renewal::NewCa, &names, NOW, v).unwrap();
        assert!(m.cert_not_after <= m.ca_not_after);
    }
}
