//! `--ca-bundle` (or `AWS_CA_BUNDLE`, as aws-cli reads it): certificates trusted for an
//! https endpoint beside the system's roots, for a server whose certificate a private CA
//! signed (a MinIO on the LAN, a provider's on-premises gateway). Read and checked once at
//! start, so a wrong path or a file without a certificate stops the mount with its name
//! rather than failing every request later.

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// Larger than any bundle of roots (the system's whole store is about 200 KiB).
const MAX_BUNDLE_BYTES: u64 = 16 << 20;

#[derive(Clone)]
pub struct CaBundle {
    /// The usable certificates again as PEM, for the SDK's trust store: it parses that
    /// itself and panics on a certificate it cannot use as a root.
    pem: Arc<[u8]>,
    certificates: Arc<[CertificateDer<'static>]>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} certificates)", self.certificates.len())
    }
}

impl CaBundle {
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let shown = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| format!("CA bundle {shown}: {e}"))?
            .len();
        if size > MAX_BUNDLE_BYTES {
            return Err(format!(
                "CA bundle {shown}: {size} bytes, more than a bundle of certificates can be"
            ));
        }
        let pem = std::fs::read(path).map_err(|e| format!("CA bundle {shown}: {e}"))?;
        CaBundle::from_pem(&pem).map_err(|e| format!("CA bundle {shown}: {e}"))
    }

    pub fn from_pem(pem: &[u8]) -> Result<CaBundle, String> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM: {e}"))?;
        if certificates.is_empty() {
            return Err("no certificate in it (a PEM file of `-----BEGIN CERTIFICATE-----` blocks is expected)".into());
        }
        // A system bundle given as AWS_CA_BUNDLE may hold a root rustls cannot use (the
        // SDK skips those among the system's too); one without any usable root is a mistake.
        let total = certificates.len();
        let usable: Vec<_> = certificates
            .into_iter()
            .filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok())
            .collect();
        if usable.is_empty() {
            return Err(format!("none of its {total} certificates can be used as a root"));
        }
        if usable.len() < total {
            tracing::debug!(
                "CA bundle: {} of {total} certificates skipped (not usable as roots)",
                total - usable.len()
            );
        }
        Ok(CaBundle {
            pem: usable.iter().flat_map(|cert| pem_block(cert)).collect(),
            certificates: usable.into(),
        })
    }

    /// The SDK's https client, as its default one (rustls with aws-lc, the proxy from the
    /// environment) but for the trust store: the system's roots and the bundle's.
    pub fn sdk_http_client(&self) -> Result<SharedHttpClient, String> {
        let trust = TrustStore::default().with_pem_certificate(self.pem.to_vec());
        let context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| format!("CA bundle: {e}"))?;
        Ok(Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = ConnectorBuilder::default()
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context.clone());
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(ProxyConfig::from_env()));
            connector.build()
        }))
    }
}

/// One certificate as a PEM block, its base64 in lines of 64 characters.
fn pem_block(cert: &CertificateDer<'_>) -> Vec<u8> {
    let encoded = aws_smithy_types::base64::encode(cert.as_ref());
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in encoded.as_bytes().chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    pem
}

/// The roots connections of our own verify https endpoints against: the system's (as the
/// SDK loads them: `SSL_CERT_FILE` and `SSL_CERT_DIR` replace them) and `bundle`'s.
pub fn trusted_roots(bundle: Option<&CaBundle>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if let Some(e) = native.errors.first() {
        tracing::debug!("system root certificates: {e}");
    }
    // A system root rustls cannot use is skipped, as the SDK does.
    roots.add_parsable_certificates(native.certs);
    if let Some(bundle) = bundle {
        roots.add_parsable_certificates(bundle.certificates.iter().cloned());
    }
    if roots.is_empty() {
        // As the SDK does: an http:// endpoint still works, and an https:// one fails each
        // request with the certificate it could not verify.
        tracing::warn!("no TLS root certificates (none in the system's store): https endpoints cannot be verified");
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused_with_what_was_expected() {
        let e = CaBundle::from_pem(b"hello\n").unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let key_only = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(CaBundle::from_pem(key_only).unwrap_err().contains("no certificate"));
    }

    #[test]
    fn a_certificate_that_does_not_parse_is_refused() {
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = CaBundle::from_pem(garbage).unwrap_err();
        assert!(e.contains("none of its 1 certificates"), "{e}");
    }

    #[test]
    fn the_test_ca_loads_and_joins_the_system_roots() {
        let bundle = CaBundle::from_pem(include_bytes!("../../tests/it/tls/ca.pem")).unwrap();
        assert_eq!(format!("{bundle:?}"), "CaBundle(1 certificates)");
        assert_eq!(trusted_roots(Some(&bundle)).len(), trusted_roots(None).len() + 1);
        bundle.sdk_http_client().unwrap();
    }

    /// Debian's bundle, which environments set as AWS_CA_BUNDLE for aws-cli.
    #[test]
    fn the_systems_whole_bundle_loads_where_there_is_one() {
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if system.exists() {
            let bundle = CaBundle::load(system).unwrap();
            assert!(bundle.certificates.len() > 50, "{bundle:?}");
        }
    }

    /// What the SDK is given parses, and every certificate in it is a root, as its
    /// trust store requires (it panics otherwise).
    #[test]
    fn a_certificate_that_cannot_be_a_root_is_left_out_of_what_the_sdk_gets() {
        let ca = include_bytes!("../../tests/it/tls/ca.pem");
        let unusable = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bundle = CaBundle::from_pem(&[&unusable[..], &ca[..]].concat()).unwrap();
        assert_eq!(format!("{bundle:?}"), "CaBundle(1 certificates)");
        let given: Vec<_> = CertificateDer::pem_slice_iter(&bundle.pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let original: Vec<_> = CertificateDer::pem_slice_iter(ca).collect::<Result<_, _>>().unwrap();
        assert_eq!(given, original);
        for cert in given {
            RootCertStore::empty().add(cert).unwrap();
        }
    }

    #[test]
    fn a_missing_file_names_itself() {
        let e = CaBundle::load(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("CA bundle /nonexistent/ca.pem:"), "{e}");
    }
}
