//! rustls verifiers for the fleet: the stock WebPKI chain and validity checks
//! against the fleet CA only, then on6's own checks (revocation list, a
//! parseable on6 identity). Both sides of every connection use them.

use super::{NodeIdentity, RevocationList};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use std::sync::Arc;

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    store.add(ca.clone())?;
    Ok(Arc::new(store))
}

fn fleet_checks(end_entity: &CertificateDer<'_>, revoked: &RevocationList) -> Result<(), Error> {
    let identity = NodeIdentity::from_der(end_entity).map_err(|e| {
        tracing::warn!(error = %e, "peer certificate lacks an on6 identity");
        Error::InvalidCertificate(CertificateError::BadEncoding)
    })?;
    if revoked.is_revoked(&identity.serial) {
        tracing::warn!(peer = %identity.name, serial = %identity.serial, "refused revoked certificate");
        return Err(Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

#[derive(Debug)]
struct FleetClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevocationList>,
}

/// The server side's check of connecting clients: a fleet certificate is mandatory.
pub fn client_verifier(
    ca: &CertificateDer<'static>,
    revoked: Arc<RevocationList>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
        .build()
        .map_err(|e| Error::General(e.to_string()))?;
    Ok(Arc::new(FleetClientVerifier { inner, revoked }))
}

impl ClientCertVerifier for FleetClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "refused client certificate");
            })?;
        fleet_checks(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct FleetServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<RevocationList>,
}

/// The client side's check of the server: chain to the fleet CA, the expected
/// node name, not revoked.
pub fn server_verifier(
    ca: &CertificateDer<'static>,
    revoked: Arc<RevocationList>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider)
        .build()
        .map_err(|e| Error::General(e.to_string()))?;
    Ok(Arc::new(FleetServerVerifier { inner, revoked }))
}

impl ServerCertVerifier for FleetServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(
                |e| tracing::warn!(error = %e, server = ?server_name, "refused server certificate"),
            )?;
        fleet_checks(end_entity, &self.revoked)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
