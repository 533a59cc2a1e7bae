//! HTTPS served by the service itself: rustls (on aws-lc-rs), certificates and
//! a key from PEM files, handshakes off the accept loop.
//!
//! The seed's service refuses plain HTTP. So does this one, on any address
//! but loopback, unless `--behind-tls-proxy` says a proxy in front
//! terminates TLS (see [`check_plain`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::StartError;

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// The acceptor for the certificate chain in `cert` and the private key in
/// `key` (PEM files). HTTP/1.1 is offered by ALPN.
///
/// # Errors
///
/// [`StartError::Setting`] naming the flag whose file could not be read or
/// used (never the key's content).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let bad = |field: &'static str, reason: String| StartError::Setting { field, reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| bad("--tls-cert", format!("`{}`: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(bad(
            "--tls-cert",
            format!("`{}` holds no certificate", cert.display()),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("--tls-key", format!("`{}`: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("--tls-cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| bad("--tls-key", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Refuse plain HTTP on `listen` unless it is a loopback address or a
/// proxy in front terminates TLS (`behind_proxy`).
///
/// ```
/// use grantwheel_server::tls::check_plain;
/// assert!(check_plain("127.0.0.1:8080".parse().unwrap(), false).is_ok());
/// assert!(check_plain("[::1]:8080".parse().unwrap(), false).is_ok());
/// assert!(check_plain("0.0.0.0:8080".parse().unwrap(), false).is_err());
/// assert!(check_plain("0.0.0.0:8080".parse().unwrap(), true).is_ok());
/// ```
///
/// # Errors
///
/// [`StartError::Setting`] for `--listen`, saying what to do.
pub fn check_plain(listen: SocketAddr, behind_proxy: bool) -> Result<(), StartError> {
    if listen.ip().is_loopback() || behind_proxy {
        return Ok(());
    }
    Err(StartError::Setting {
        field: "--listen",
        reason: format!(
            "{listen} is not a loopback address, and plain HTTP would carry keys in the clear: \
             give --tls-cert and --tls-key, or --behind-tls-proxy when a proxy in front terminates TLS"
        ),
    })
}

/// A listener whose connections are TLS: TCP connections are accepted in
/// a task of their own and each handshake runs apart, so a slow or silent
/// client never holds up the others. Dropping it stops accepting.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Serve TLS with `acceptor` on `tcp`.
    ///
    /// # Errors
    ///
    /// The operating system's error reading the listener's address.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait, as axum's
                        // own listener does, instead of spinning.
                        tracing::warn!(error = %e, "a connection could not be accepted");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("grantwheel_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("grantwheel_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            addr,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended (it never does on its own): serve
            // the connections already open until shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
