//! One keep-alive HTTP/1.1 connection per worker, plain or TLS, and one exchange on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::CONNECTION;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use crate::args::Target;

pub type Connection = SendRequest<Full<Bytes>>;

/// Why an exchange got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    Connect,
    Tls,
    Timeout,
    /// The connection broke while the request or reply was on it.
    Broken,
}

/// Whether the first failure of each kind has been shown.
static SHOWN: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

impl Failure {
    /// This failure, after telling the user (once per kind) what went wrong: "tls" alone does
    /// not say that a certificate was refused.
    fn because(self, cause: impl std::fmt::Display) -> Failure {
        if !SHOWN[self as usize].swap(true, Ordering::Relaxed) {
            eprintln!("loadtest: first {} error: {cause}", self.as_str());
        }
        self
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Tls => "tls",
            Failure::Timeout => "timeout",
            Failure::Broken => "connection broken",
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct Client {
    target: Target,
    uri: Uri,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Result<Client, String> {
        let tls = if target.tls {
            let provider = Arc::new(crypto::ring::default_provider());
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| format!("{:?} is not a TLS server name", target.host))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let uri = target
            .path_and_query
            .parse()
            .map_err(|e| format!("bad path {:?}: {e}", target.path_and_query))?;
        Ok(Client {
            uri,
            target,
            tls,
            timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn timed_out(&self) -> Failure {
        Failure::Timeout.because(format_args!(
            "no answer within {} (--timeout)",
            humantime::format_duration(self.timeout)
        ))
    }

    /// A new connection, within the reply timeout.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let connecting = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|e| Failure::Connect.because(e))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| Failure::Tls.because(e))?;
                    handshake(tls).await
                }
            }
        };
        tokio::time::timeout(self.timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(self.timed_out()))
    }

    /// Sends the target request on `connection` (opening one when there is none) and reads the
    /// whole reply. A connection that broke, timed out or was closed by the server is dropped.
    pub async fn exchange(&self, connection: &mut Option<Connection>) -> Result<Reply, Failure> {
        let mut open = match connection.take() {
            Some(open) if !open.is_closed() => open,
            _ => self.connect().await?,
        };
        let mut request = Request::new(Full::new(self.target.body.clone()));
        *request.method_mut() = self.target.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.target.headers.clone();

        let exchange = async {
            let broken = |e: hyper::Error| Failure::Broken.because(e);
            open.ready().await.map_err(broken)?;
            let reply = open.send_request(request).await.map_err(broken)?;
            let (parts, body) = reply.into_parts();
            let body = body.collect().await.map_err(broken)?.to_bytes();
            let closing = parts
                .headers
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            Ok((
                Reply {
                    status: parts.status,
                    body,
                },
                closing,
            ))
        };
        let (reply, closing) = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(self.timed_out()))?;
        if !closing {
            *connection = Some(open);
        }
        Ok(reply)
    }
}

async fn handshake<S>(io: S) -> Result<Connection, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, driver) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::Broken.because(e))?;
    tokio::spawn(async move {
        // Ends when the server or our side closes the connection; errors show up in send.
        let _ = driver.await;
    });
    Ok(send)
}
