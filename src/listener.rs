//! The accept loop both HTTP listeners (admin and webhook) share, so that neither can be
//! held open or used up by clients that are slow on purpose.
//!
//! Every connection is in one phase at a time, and each phase but one has a deadline:
//!
//! | phase      | from                                   | deadline         | cut as           |
//! |------------|----------------------------------------|------------------|------------------|
//! | head       | accept (TLS handshake included), or the first byte of the next request | `header_timeout` | `header_timeout` |
//! | body       | the request head was read              | `body_timeout`   | `body_timeout`   |
//! | handling   | the body was read (or not wanted)      | none: the handler's own (webhook `response_timeout`) | |
//! | responding | the handler answered                   | `body_timeout`   | `write_timeout`  |
//! | idle       | the answer was handed over             | `idle_timeout`   | (a normal close) |
//!
//! hyper's own `header_read_timeout` is not used: it runs from the moment hyper waits for a
//! request, so it also ends idle keep-alive connections, and the idle wait could not be
//! longer than the header timeout. A connection past its deadline is dropped, which closes
//! its socket; the handler's future goes with it.
//!
//! `max_connections` is a semaphore per listener: a connection over it is accepted and
//! closed at once, so the listener keeps accepting (and freeing) while it is full, and
//! the admin listener's connections are never taken by webhook clients.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ListenerLimits;
use crate::crypto::load_certified_key;
use crate::metrics::{self, Cut, Listener, ListenerMetrics};

/// How long a listener waits after an accept error that is not about one connection
/// (out of file descriptors): open connections finish meanwhile and free some.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one "listener full" and one "cannot accept" warning per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) a connection may send.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The certificate files are looked at no more often than this (on a handshake).
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` in the background, with `limits`, over TLS when
/// `tls` is given.
pub fn spawn(
    listener: TcpListener,
    which: Listener,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    router: Router,
) {
    tokio::spawn(accept_loop(listener, which, limits, tls, router));
}

async fn accept_loop(
    listener: TcpListener,
    which: Listener,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    router: Router,
) {
    let metrics = metrics::listener(which);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned_full: Option<Instant> = None;
    let mut warned_accept: Option<Instant> = None;
    let due = |warned: &mut Option<Instant>| {
        let due = warned.is_none_or(|at| at.elapsed() >= WARNING_INTERVAL);
        if due {
            *warned = Some(Instant::now());
        }
        due
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                if due(&mut warned_accept) {
                    tracing::warn!(listener = which.label(), %error, "cannot accept a connection");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        metrics.accepted.inc();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.cut(Cut::Limit);
            if due(&mut warned_full) {
                tracing::warn!(
                    listener = which.label(),
                    max_connections = limits.max_connections,
                    "listener full: new connections are closed until some end"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            permit,
            which,
            limits,
            tls.clone(),
            router.clone(),
        ));
    }
}

/// Errors of one connection that went away before it was accepted.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts the connection in `bridge_listener_connections` while it lives.
struct OpenConnection(&'static ListenerMetrics);

impl OpenConnection {
    fn new(metrics: &'static ListenerMetrics) -> Self {
        metrics.open.inc();
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    which: Listener,
    limits: ListenerLimits,
    tls: Option<TlsAcceptor>,
    router: Router,
) {
    let metrics = metrics::listener(which);
    let _open = OpenConnection::new(metrics);
    let clock = Arc::new(Clock::new(limits));
    match tls {
        None => drive(stream, clock, which, router).await,
        Some(acceptor) => {
            let deadline = clock.deadline().unwrap_or_else(Instant::now);
            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => drive(stream, clock, which, router).await,
                Ok(Err(error)) => {
                    metrics.cut(Cut::TlsHandshake);
                    tracing::debug!(listener = which.label(), %error, "TLS handshake failed");
                }
                Err(_) => metrics.cut(Cut::HeaderTimeout),
            }
        }
    }
    drop(permit);
}

/// Serves HTTP/1.1 on one connection until it ends or misses its phase's deadline.
async fn drive<S>(io: S, clock: Arc<Clock>, which: Listener, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: io,
        clock: clock.clone(),
    });
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let clock = service_clock.clone();
        let router = router.clone();
        async move {
            clock.enter(if request.body().is_end_stream() {
                Phase::Handling
            } else {
                Phase::Body
            });
            let request = request.map(|body| RequestBody {
                inner: body,
                clock: clock.clone(),
                finished: false,
            });
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            clock.enter(Phase::Responding);
            Ok::<_, Infallible>(response.map(|body| ResponseBody { inner: body, clock }))
        }
    });
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        // A request head is at most this (hyper's default is about 400 KiB): with
        // `max_connections` it bounds what clients that never authenticate can make
        // the listener hold before any check ran.
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        let deadline = clock.deadline();
        let expired = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(listener = which.label(), %error, "connection ended with an error");
                }
                return;
            }
            () = expired => {
                // The phase may have moved on just as the old deadline passed.
                if let Some(phase) = clock.expired() {
                    if let Some(cut) = phase.cut() {
                        metrics::listener(which).cut(cut);
                        tracing::debug!(listener = which.label(), reason = cut.label(), "connection cut");
                    }
                    return;
                }
            }
            () = clock.changed.notified() => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Handling,
    Responding,
    Idle,
}

impl Phase {
    /// How a connection cut in this phase is counted; `None` for a normal close.
    fn cut(self) -> Option<Cut> {
        match self {
            Phase::Head => Some(Cut::HeaderTimeout),
            Phase::Body => Some(Cut::BodyTimeout),
            Phase::Responding => Some(Cut::WriteTimeout),
            Phase::Handling | Phase::Idle => None,
        }
    }
}

/// The phase of one connection and its deadline, moved on by the IO, the service and the
/// bodies, watched by `drive`.
struct Clock {
    limits: ListenerLimits,
    state: Mutex<(Phase, Option<Instant>)>,
    changed: Notify,
}

impl Clock {
    fn new(limits: ListenerLimits) -> Self {
        Clock {
            limits,
            state: Mutex::new((Phase::Head, Some(Instant::now() + limits.header_timeout))),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Option<Instant>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, phase: Phase) {
        let timeout = match phase {
            Phase::Head => Some(self.limits.header_timeout),
            Phase::Body | Phase::Responding => Some(self.limits.body_timeout),
            Phase::Handling => None,
            Phase::Idle => Some(self.limits.idle_timeout),
        };
        *self.lock() = (phase, timeout.map(|timeout| Instant::now() + timeout));
        // A stored permit if `drive` is not waiting right now: it looks again.
        self.changed.notify_one();
    }

    /// Moves to `to` only from `from`.
    fn advance(&self, from: Phase, to: Phase) {
        if self.lock().0 == from {
            self.enter(to);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.lock().1
    }

    /// The phase, when its deadline has passed.
    fn expired(&self) -> Option<Phase> {
        let (phase, deadline) = *self.lock();
        deadline
            .is_some_and(|at| at <= Instant::now())
            .then_some(phase)
    }
}

/// The connection's IO: the first byte of the next request ends the idle phase.
struct Watched<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.advance(Phase::Idle, Phase::Head);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that ends the body phase when it is read to the end or dropped (an
/// unread body makes hyper close the connection after the answer).
struct RequestBody {
    inner: Incoming,
    clock: Arc<Clock>,
    finished: bool,
}

impl RequestBody {
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.clock.advance(Phase::Body, Phase::Handling);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if matches!(frame, None | Some(Err(_))) || self.inner.is_end_stream() {
            self.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// An answer's body; hyper drops it once the last of it is written out, which starts the
/// idle phase.
struct ResponseBody {
    inner: axum::body::Body,
    clock: Arc<Clock>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.clock.advance(Phase::Responding, Phase::Idle);
    }
}

/// The TLS side of the webhook listener: HTTP/1.1 only, with the certificate and key of
/// `cert` and `key`, re-read when the files change.
pub fn tls_acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let resolver = ReloadingCert::new(cert, key).map_err(|(name, message)| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {message}"))
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What tells that a file changed: a rename (new inode), a rewrite (mtime, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks, so a swapped link (Kubernetes secrets, certbot's live/) counts.
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        device: metadata.dev(),
        inode: metadata.ino(),
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

/// Serves the certificate of the files, re-reading them on a handshake when they
/// changed (looked at once a second at most). New files that do not load (half written,
/// key and certificate not yet both replaced) leave the one in use, with a warning.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked: std::time::Instant,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<Self, (&'static str, String)> {
        // Stamps before reading: a change in between is seen at the next check.
        let stamps = (file_stamp(cert), file_stamp(key));
        let current = Arc::new(load_certified_key(cert, key)?);
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(CertState {
                current,
                stamps,
                checked: std::time::Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= CERT_CHECK_INTERVAL {
            state.checked = std::time::Instant::now();
            let stamps = (file_stamp(&self.cert), file_stamp(&self.key));
            if stamps != state.stamps {
                state.stamps = stamps;
                match load_certified_key(&self.cert, &self.key) {
                    Ok(key) => {
                        state.current = Arc::new(key);
                        tracing::info!(cert = %self.cert.display(), "webhook TLS certificate reloaded");
                    }
                    Err((key, message)) => tracing::warn!(
                        "[webhook] {key}: {message}; the certificate in use stays until the files load"
                    ),
                }
            }
        }
        Some(state.current.clone())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every connection and every broker
/// connection is a file descriptor, and the usual soft default (1024) is soon used up.
/// Returns the soft and hard limits in effect.
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}
