//! TLS configurations, built from the configured PEM files: the server side for clients
//! (`[tls]`) and the client side toward the upstream (`[upstream] tls`). rustls with the `ring`
//! provider, TLS 1.2 and 1.3, its safe defaults.

use std::io;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClientTls, UpstreamTls};

/// `ring`, the provider that builds with nothing but a C compiler (aws-lc-rs needs cmake).
/// rustls marks it deprecated for lacking post-quantum key exchange, which Redis does not
/// offer either.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn certs(path: &std::path::Path) -> io::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn key(path: &std::path::Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn roots(path: &std::path::Path) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The TLS listener's configuration: its certificate and key, and client certificates
/// required when a CA is set.
pub(crate) fn server_config(tls: &ClientTls) -> io::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match &tls.ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(invalid)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs(&tls.cert_file)?, key(&tls.key_file)?)
        .map_err(invalid)?;
    Ok(Arc::new(config))
}

/// The TLS listener's configuration in force: read by every accept, replaced by a reload
/// (certificates are read again from their files, so a rotated certificate is served from
/// the next handshake on; established connections keep theirs).
pub(crate) struct ServerTls(Mutex<Arc<ServerConfig>>);

impl ServerTls {
    pub(crate) fn new(config: Arc<ServerConfig>) -> ServerTls {
        ServerTls(Mutex::new(config))
    }

    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// Drops the upstream connectors built so far: the next upstream connection reads its
/// certificate files again (a reload calls this, for rotated certificates).
pub(crate) fn forget_connectors() {
    *CONNECTORS.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

type Connectors = Mutex<Option<(UpstreamTls, Arc<ClientConfig>)>>;
static CONNECTORS: Connectors = Mutex::new(None);

/// What every upstream connection needs for TLS: the configuration and the name to verify.
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// A new TLS client session toward the upstream.
    pub(crate) fn session(&self) -> io::Result<rustls::ClientConnection> {
        rustls::ClientConnection::new(self.config.clone(), self.name.clone()).map_err(invalid)
    }
}

/// The connector for `tls` toward `address` (host:port). The configuration (certificates read
/// from their files) is built once per setting and shared by every address: the shared
/// connections, dedicated ones, the probe, the command-table reader and the sentinels ask.
pub(crate) fn connector(tls: &UpstreamTls, address: &str) -> io::Result<Connector> {
    let config = {
        let mut cache = CONNECTORS.lock().unwrap_or_else(|p| p.into_inner());
        match cache.as_ref() {
            Some((k, config)) if k == tls => config.clone(),
            _ => {
                let config = client_config(tls)?;
                *cache = Some((tls.clone(), config.clone()));
                config
            }
        }
    };
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(address).to_owned(),
    };
    let name = ServerName::try_from(host).map_err(invalid)?;
    Ok(Connector { config, name })
}

fn client_config(tls: &UpstreamTls) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots(&tls.ca_file)?);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(invalid)?,
    };
    Ok(Arc::new(config))
}

/// The host of `host:port` (`[::1]:6379` gives `::1`).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_name_is_the_addresss_host() {
        assert_eq!(super::host_of("redis.internal:6380"), "redis.internal");
        assert_eq!(super::host_of("127.0.0.1:6379"), "127.0.0.1");
        assert_eq!(super::host_of("[::1]:6379"), "::1");
    }
}
