//! The sealtensors key broker (docs/broker.md): it holds key-encryption
//! keys, registered models and licences, and releases a model key (SPEC §6.6)
//! only when the licence and the file's own policy allow, sealed with HPKE to
//! the client's ephemeral key. Every release and refusal is audited, and the
//! audit row is committed before the reply.
//!
//! The HTTP layer (axum) is thin: it bounds requests (body size, rate per
//! client address), authenticates admins, and hands the release to
//! [`release::Releaser`], which runs on a blocking thread.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod attest;
pub mod config;
mod error;
pub mod release;
pub mod store;
pub mod tpm;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use sealtensors::crypto::{ct_eq, random_array, sha256};
use sealtensors::keys::{BrokerKek, VerifyingKey};

pub use config::Config;
pub use error::{BrokerError, Denial, Result};
pub use store::{AuditRow, LicenceRecord, ModelRecord, PostgresStore, SqliteStore, Store};

pub(crate) fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Hex SHA-256 of a token: what the configuration and the store keep.
pub fn hash_token(token: &str) -> String {
    sha256(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Client addresses the rate limiter remembers at most.
const RATE_CLIENTS_MAX: usize = 100_000;

/// Requests per minute per client; a fixed window, bounded memory. A client
/// is an IPv4 address or an IPv6 /64 (one host is routinely given a whole
/// /64, so counting /128s would let it pick a fresh address per request).
struct RateLimiter {
    per_minute: u32,
    seen: Mutex<RateTable>,
}

#[derive(Default)]
struct RateTable {
    clients: HashMap<IpAddr, (Instant, u32)>,
    /// When the table was last swept of ended windows (at most once a
    /// second: a sweep walks the whole table under the lock).
    swept: Option<Instant>,
}

/// The rate limiter's key for a peer address.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl RateLimiter {
    fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut t) = self.seen.lock() else {
            return false;
        };
        let now = Instant::now();
        let ip = rate_key(ip);
        if t.clients.len() >= RATE_CLIENTS_MAX && !t.clients.contains_key(&ip) {
            if t.swept
                .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
            {
                t.clients
                    .retain(|_, (w, _)| now.duration_since(*w) < Duration::from_secs(60));
                t.swept = Some(now);
            }
            // Still full of clients seen this minute: a new one waits for a
            // window to end, rather than the table growing without bound.
            if t.clients.len() >= RATE_CLIENTS_MAX {
                return false;
            }
        }
        let e = t.clients.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.per_minute
    }
}

/// A configured broker, ready to serve.
pub struct Broker {
    releaser: release::Releaser,
    admin_sha256: [u8; 32],
    limiter: RateLimiter,
    max_body: usize,
    connections: Arc<Connections>,
    request_timeout: Duration,
}

/// Open connections, in all and per client (an IPv4 address or IPv6 /64):
/// each holds a [`ConnectionSlot`] from accept to close.
struct Connections {
    total: usize,
    per_client: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// When a refusal was last logged (at most one warning per 10 s).
    warned: Mutex<Option<Instant>>,
}

/// One open connection's place; given back when dropped.
struct ConnectionSlot {
    of: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    fn take(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionSlot> {
        let client = rate_key(peer);
        let refused = {
            let mut held = self.held.lock().ok()?;
            let (total, per) = &mut *held;
            let mine = per.get(&client).copied().unwrap_or(0);
            if *total >= self.total || mine >= self.per_client {
                Some((*total, mine))
            } else {
                *total += 1;
                per.insert(client, mine + 1);
                None
            }
        };
        if let Some((total, mine)) = refused {
            let now = Instant::now();
            if let Ok(mut w) = self.warned.lock() {
                if w.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    *w = Some(now);
                    tracing::warn!(
                        client = %client, open = total, client_open = mine,
                        max_connections = self.total, max_connections_per_client = self.per_client,
                        "connection refused: too many open connections"
                    );
                }
            }
            return None;
        }
        Some(ConnectionSlot {
            of: self.clone(),
            client,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.of.held.lock() {
            let (total, per) = &mut *held;
            *total = total.saturating_sub(1);
            if let Some(n) = per.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&self.client);
                }
            }
        }
    }
}

impl Broker {
    /// Load the keys named in the configuration and use `store`.
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Result<Arc<Broker>> {
        config.check()?;
        let mut keks = HashMap::new();
        for k in &config.keys {
            // A JWK file (X25519: `broker` slots; P-256: `broker-p256`), a
            // TPM identity file, or a pkcs11: URI: the last two keep the KEK
            // in hardware (docs/hardware-keys.md).
            keks.insert(k.kid.clone(), BrokerKek::load(&k.kid, &k.identity)?);
        }
        Self::with_keks(config, store, keks)
    }

    /// As [`Broker::new`], with keys already in memory (tests, embedding).
    pub fn with_keks(
        config: &Config,
        store: Arc<dyn Store>,
        keks: HashMap<String, BrokerKek>,
    ) -> Result<Arc<Broker>> {
        let mut admin = [0u8; 32];
        for (i, b) in admin.iter_mut().enumerate() {
            *b = u8::from_str_radix(&config.admin_token_sha256[2 * i..2 * i + 2], 16)
                .map_err(|_| BrokerError::Config("admin_token_sha256 is not hex".into()))?;
        }
        Ok(Arc::new(Broker {
            releaser: release::Releaser {
                store,
                keks,
                ttl: config.release_ttl,
                window: config.replay_window,
                verifiers: attest::default_verifiers(),
            },
            admin_sha256: admin,
            limiter: RateLimiter {
                per_minute: config.rate_per_minute,
                seen: Mutex::default(),
            },
            connections: Arc::new(Connections {
                total: config.max_connections,
                per_client: config.max_connections_per_client,
                held: Mutex::default(),
                warned: Mutex::default(),
            }),
            max_body: config.max_body,
            request_timeout: Duration::from_secs(config.request_timeout),
        }))
    }

    /// The HTTP routes (docs/broker.md).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/keys/{kid}", get(public_key))
            .route("/keys/{kid}/release", post(release_handler))
            .route("/admin/models", get(list_models).post(register_model))
            .route("/admin/licences", get(list_licences).post(issue_licence))
            .route("/admin/licences/{id}/revoke", post(revoke_licence))
            .route("/admin/audit", get(audit))
            .route("/admin/attestation-keys", post(enrol_attestation_key))
            .layer(middleware::from_fn_with_state(self.clone(), rate_limit))
            .with_state(self.clone())
    }

    /// Serve on a bound listener until `shutdown` resolves: HTTPS when `tls`
    /// is given, else plain HTTP.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        // Each connection holds its place for its life; without a free one
        // it is closed as soon as it is accepted.
        let connections = self.connections.clone();
        let router = self.router();
        let app = tower::service_fn(move |peer: SocketAddr| {
            let slot = connections.take(peer.ip());
            let router = router.clone();
            async move {
                let slot = slot.ok_or_else(|| {
                    std::io::Error::other(format!("{peer}: too many connections"))
                })?;
                let svc = tower::Layer::layer(&axum::Extension(ConnectInfo(peer)), router);
                Ok::<_, std::io::Error>(Permitted {
                    inner: svc,
                    _slot: Arc::new(slot),
                })
            }
        });
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            h.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        let listener = listener.into_std()?;
        // HTTP/1.1 only (hyper would otherwise accept an HTTP/2 preface, with
        // no idle bound); headers within `headers`, for the first request and
        // for every later one on a kept-alive connection (an idle connection
        // is closed then); the TLS handshake within 10 s (axum-server).
        let headers = self.request_timeout.min(Duration::from_secs(10));
        match tls {
            None => {
                let mut server = axum_server::from_tcp(listener)?
                    .http1_only()
                    .handle(handle)
                    .first_request_timeout(Some(headers));
                server.http_builder().http1().header_read_timeout(headers);
                server.serve(app).await?
            }
            Some(cfg) => {
                let mut server = axum_server::from_tcp_rustls(
                    listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(cfg),
                )?
                .http1_only()
                .handle(handle)
                .first_request_timeout(Some(headers));
                server.http_builder().http1().header_read_timeout(headers);
                server.serve(app).await?
            }
        }
        Ok(())
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| ct_eq(&sha256(t.as_bytes()), &self.admin_sha256))
    }
}

/// A broker serving on its own thread and runtime (tests, embedding).
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Running {
    /// Start `broker` on `addr` (port 0: any free port), plain HTTP.
    pub fn start(broker: Arc<Broker>, addr: SocketAddr) -> Result<Running> {
        Self::start_with_tls(broker, addr, None)
    }

    /// Start `broker` on `addr`, HTTPS when `tls` is given.
    pub fn start_with_tls(
        broker: Arc<Broker>,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Running> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(broker.serve(listener, tls, async {
                let _ = rx.await;
            }))
        });
        Ok(Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stop and wait for the server to finish.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(BrokerError::Config("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// The rustls server configuration for a PEM certificate chain and key,
/// with the aws-lc-rs provider (the one crypto backend).
pub fn server_tls(tls: &config::TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        BrokerError::Config(format!("[tls] {what} {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| bad("cert", &tls.cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("cert", &tls.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("cert", &tls.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| bad("key", &tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("cert/key", &tls.cert, &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serve a configuration until Ctrl-C (the `sealtensors serve` command).
pub fn serve_config(config: &Config) -> Result<()> {
    let store = store::open(&config.store, &config.database)?;
    let broker = Broker::new(config, store)?;
    let tls = config.tls.as_ref().map(server_tls).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %listener.local_addr()?, scheme, "sealtensors broker listening");
        broker
            .serve(listener, tls, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
}

// ---- HTTP --------------------------------------------------------------------------------------

fn error(status: u16, code: &str, reason: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (s, Json(json!({"error": code, "reason": reason}))).into_response()
}

/// A refusal of an admin request, answered as JSON.
struct ApiError {
    status: u16,
    code: &'static str,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.reason)
    }
}

fn api(status: u16, code: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        reason: reason.into(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A connection's service, holding the connection's place while it lives.
#[derive(Clone)]
struct Permitted<S> {
    inner: S,
    _slot: Arc<ConnectionSlot>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Permitted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// A request body, read within `request_timeout` and `max_body`. Only the
/// reading is timed: once a request has arrived, its store work is never cut
/// short (an answer lost after a commit would contradict the audit).
async fn read_body(b: &Broker, body: Body) -> std::result::Result<Bytes, Denial> {
    match tokio::time::timeout(b.request_timeout, axum::body::to_bytes(body, b.max_body)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            Err(if too_large {
                error::deny(
                    413,
                    "too_large",
                    format!("the request body exceeds {} bytes", b.max_body),
                )
            } else {
                error::deny(400, "bad_request", "the request body could not be read")
            })
        }
        Err(_) => Err(error::deny(
            408,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s; retry",
                b.request_timeout.as_secs()
            ),
        )),
    }
}

async fn rate_limit(
    State(b): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !b.limiter.allow(peer.ip()) {
        return error(
            429,
            "rate_limited",
            "too many requests from this address; retry in a minute",
        );
    }
    next.run(req).await
}

async fn public_key(State(b): State<Arc<Broker>>, Path(kid): Path<String>) -> Response {
    match b.releaser.keks.get(&kid) {
        Some(k) => {
            Json(json!({"kid": kid, "public_key": k.public_key().to_string()})).into_response()
        }
        None => error(
            404,
            "unknown_key",
            &format!("this broker has no key id {kid:?}"),
        ),
    }
}

async fn release_handler(
    State(b): State<Arc<Broker>>,
    kid: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let token = bearer(&headers).map(str::to_string);
    // A key id that is not even text (a bad percent-escape) is still a
    // release request: refused through the releaser, so it is audited.
    let (kid, bad_kid) = match kid {
        Ok(Path(kid)) => (kid, None),
        Err(r) => (
            "<not UTF-8>".to_string(),
            Some(Denial {
                status: 400,
                code: "bad_request",
                reason: format!("the key id in the path is not valid: {}", r.body_text()),
            }),
        ),
    };
    // A body that is too large or too slow is refused through the releaser
    // too, so it is audited.
    let body = match bad_kid {
        Some(d) => Err(d),
        None => read_body(&b, body).await,
    };
    let now = now_unix();
    let b2 = b.clone();
    let res = tokio::task::spawn_blocking(move || {
        let body = body.as_ref().map(|x| &x[..]).map_err(Clone::clone);
        b2.releaser.release(&kid, token.as_deref(), body, now)
    })
    .await;
    match res {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(d)) => error(d.status, d.code, &d.reason),
        Err(_) => error(500, "internal", "the release failed; try again"),
    }
}

async fn parse<T: serde::de::DeserializeOwned>(
    b: &Broker,
    body: Body,
) -> std::result::Result<T, ApiError> {
    let body = read_body(b, body)
        .await
        .map_err(|d| api(d.status, d.code, d.reason))?;
    serde_json::from_slice(&body).map_err(|e| api(400, "bad_request", e.to_string()))
}

/// What an admin request is and what it touched, for its audit row
/// (docs/broker.md "Audit"): the action, its target (a model id, a licence
/// id) and the key id or evidence kind it names.
struct AdminAudit {
    action: &'static str,
    target: String,
    machine_id: String,
    kid: String,
}

impl AdminAudit {
    fn new(action: &'static str) -> AdminAudit {
        AdminAudit {
            action,
            target: String::new(),
            machine_id: String::new(),
            kid: String::new(),
        }
    }
}

/// What a done admin action answers: its status, its body, and what was done
/// (for the audit row).
type AdminDone = (StatusCode, serde_json::Value, String);

impl Broker {
    fn check_admin(&self, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
        if self.is_admin(headers) {
            Ok(())
        } else {
            Err(api(
                401,
                "not_admin",
                "admin operations need the admin token (Authorization: Bearer ...)",
            ))
        }
    }

    /// Audit an admin request (done or refused; committed), then answer it.
    /// A row that cannot be written withholds the answer (500): the action
    /// may have been applied, but no one learns its result unrecorded.
    async fn audited(
        self: &Arc<Self>,
        headers: &HeaderMap,
        a: AdminAudit,
        outcome: std::result::Result<AdminDone, ApiError>,
    ) -> Response {
        let (decision, reason) = match &outcome {
            Ok((_, _, done)) => ("admin", done.clone()),
            Err(e) => ("admin_denied", format!("{}: {}", e.code, e.reason)),
        };
        // Every field is bounded and escaped, as in release rows: a refused
        // caller chooses the target (a licence id in the path, say).
        let row = AuditRow {
            id: 0,
            time: now_unix(),
            client: if self.is_admin(headers) {
                "admin"
            } else {
                "unknown"
            }
            .into(),
            machine_id: release::audit_text(&a.machine_id),
            model: release::audit_text(&a.target),
            kid: release::audit_text(&a.kid),
            decision: decision.into(),
            code: a.action.into(),
            reason: release::audit_text(&reason),
        };
        let store = self.releaser.store.clone();
        let written = tokio::task::spawn_blocking(move || store.audit(&row).map(|()| row)).await;
        match written {
            Ok(Ok(row)) => {
                tracing::info!(client = %row.client, target = %row.model, action = a.action, decision, "admin");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, action = a.action, "admin audit write failed");
                return error(
                    500,
                    "audit_failed",
                    "the broker could not record this admin request; its effect, if any, is not shown: check with a listing and try again later",
                );
            }
            Err(_) => return error(500, "internal", "internal error"),
        }
        match outcome {
            Ok((status, body, _)) => (status, Json(body)).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store failure");
            Err(api(
                500,
                "store_failed",
                "the broker's store failed; see its log",
            ))
        }
        Err(_) => Err(api(500, "internal", "internal error")),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> std::result::Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|_| api(500, "internal", "internal error"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterModel {
    model_id: String,
    signer: String,
    kid: String,
}

async fn register_model(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let mut a = AdminAudit::new("register_model");
    let outcome = register_model_do(&b, &headers, body, &mut a).await;
    b.audited(&headers, a, outcome).await
}

async fn register_model_do(
    b: &Arc<Broker>,
    headers: &HeaderMap,
    body: Body,
    a: &mut AdminAudit,
) -> std::result::Result<AdminDone, ApiError> {
    b.check_admin(headers)?;
    let r: RegisterModel = parse(b, body).await?;
    a.target = r.model_id.clone();
    a.kid = r.kid.clone();
    if r.model_id.is_empty() || r.model_id.len() > 256 {
        return Err(api(400, "bad_request", "model_id must be 1 to 256 bytes"));
    }
    let Ok(signer) = r.signer.parse::<VerifyingKey>() else {
        return Err(api(
            400,
            "bad_request",
            "signer must be an ed25519:... or ecdsa-p256:... public key",
        ));
    };
    if !b.releaser.keks.contains_key(&r.kid) {
        return Err(api(
            404,
            "unknown_key",
            format!("this broker has no key id {:?}", r.kid),
        ));
    }
    let m = ModelRecord {
        model_id: r.model_id,
        signer: signer.to_string(),
        kid: r.kid,
        created: now_unix(),
    };
    let store = b.releaser.store.clone();
    let m2 = m.clone();
    blocking(move || store.register_model(&m2)).await?;
    let done = format!(
        "registered model with signer {} and key id {}",
        m.signer, m.kid
    );
    Ok((StatusCode::CREATED, to_json(&m)?, done))
}

async fn list_models(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let a = AdminAudit::new("list_models");
    let outcome = async {
        b.check_admin(&headers)?;
        let store = b.releaser.store.clone();
        let v = blocking(move || store.models()).await?;
        let done = format!("listed {} models", v.len());
        Ok::<AdminDone, ApiError>((StatusCode::OK, to_json(&v)?, done))
    }
    .await;
    b.audited(&headers, a, outcome).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueLicence {
    customer: String,
    models: Vec<String>,
    #[serde(default = "one")]
    seats: u32,
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    claims: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

async fn issue_licence(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let mut a = AdminAudit::new("issue_licence");
    let outcome = issue_licence_do(&b, &headers, body, &mut a).await;
    b.audited(&headers, a, outcome).await
}

async fn issue_licence_do(
    b: &Arc<Broker>,
    headers: &HeaderMap,
    body: Body,
    a: &mut AdminAudit,
) -> std::result::Result<AdminDone, ApiError> {
    b.check_admin(headers)?;
    let r: IssueLicence = parse(b, body).await?;
    if r.customer.is_empty() || r.models.is_empty() || r.seats == 0 {
        return Err(api(
            400,
            "bad_request",
            "customer, at least one model and seats >= 1 are required",
        ));
    }
    let claims = r.claims.unwrap_or_else(|| json!({}));
    if !claims.is_object() {
        return Err(api(400, "bad_request", "claims must be a JSON object"));
    }
    let (Ok(id), Ok(secret)) = (random_array::<8>(), random_array::<32>()) else {
        return Err(api(500, "internal", "the random generator failed"));
    };
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let token = zeroize::Zeroizing::new(format!("stl_{}", b64(&secret)));
    let l = LicenceRecord {
        id: format!("lic_{id}"),
        customer: r.customer,
        models: r.models,
        seats: r.seats,
        expires: r.expires,
        claims,
        created: now_unix(),
        revoked: None,
    };
    a.target = l.id.clone();
    let hash = sha256(token.as_bytes());
    let store = b.releaser.store.clone();
    let l2 = l.clone();
    blocking(move || store.insert_licence(&l2, &hash)).await?;
    // The token is shown once, in the answer; the broker keeps only its
    // hash, and the audit row never holds it.
    let done = format!(
        "issued licence for customer {:?}: models {:?}, {} seats, expires {:?}",
        l.customer, l.models, l.seats, l.expires
    );
    Ok((
        StatusCode::CREATED,
        json!({"licence": l, "token": token.as_str()}),
        done,
    ))
}

async fn list_licences(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let a = AdminAudit::new("list_licences");
    let outcome = async {
        b.check_admin(&headers)?;
        let store = b.releaser.store.clone();
        let v = blocking(move || store.licences()).await?;
        let done = format!("listed {} licences", v.len());
        Ok::<AdminDone, ApiError>((StatusCode::OK, to_json(&v)?, done))
    }
    .await;
    b.audited(&headers, a, outcome).await
}

async fn revoke_licence(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut a = AdminAudit::new("revoke_licence");
    a.target = id.clone();
    let outcome = async {
        b.check_admin(&headers)?;
        let store = b.releaser.store.clone();
        let id2 = id.clone();
        match blocking(move || store.revoke_licence(&id2, now_unix())).await? {
            true => Ok::<AdminDone, ApiError>((
                StatusCode::OK,
                json!({"revoked": id}),
                "revoked licence".to_string(),
            )),
            false => Err(api(404, "unknown_licence", format!("no licence {id:?}"))),
        }
    }
    .await;
    b.audited(&headers, a, outcome).await
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let a = AdminAudit::new("read_audit");
    let outcome = async {
        b.check_admin(&headers)?;
        let store = b.releaser.store.clone();
        let limit = q.limit.unwrap_or(100).min(10_000);
        let v = blocking(move || store.audit_rows(limit)).await?;
        let done = format!("read {} audit rows (limit {limit})", v.len());
        Ok::<AdminDone, ApiError>((StatusCode::OK, to_json(&v)?, done))
    }
    .await;
    b.audited(&headers, a, outcome).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolKey {
    licence: String,
    machine_id: String,
    #[serde(default = "tpm_kind")]
    kind: String,
    public_key: String,
}

fn tpm_kind() -> String {
    "tpm".into()
}

/// Enrol the attestation key of one machine under a licence
/// (docs/broker.md "Attestation").
async fn enrol_attestation_key(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut a = AdminAudit::new("enrol_attestation_key");
    let outcome = enrol_attestation_key_do(&b, &headers, body, &mut a).await;
    b.audited(&headers, a, outcome).await
}

async fn enrol_attestation_key_do(
    b: &Arc<Broker>,
    headers: &HeaderMap,
    body: Body,
    a: &mut AdminAudit,
) -> std::result::Result<AdminDone, ApiError> {
    b.check_admin(headers)?;
    let r: EnrolKey = parse(b, body).await?;
    a.target = r.licence.clone();
    a.machine_id = r.machine_id.clone();
    a.kid = r.kind.clone();
    release::check_machine_id(&r.machine_id).map_err(|why| api(400, "bad_request", why))?;
    let Some(v) = b.releaser.verifiers.iter().find(|v| v.kind() == r.kind) else {
        return Err(api(
            400,
            "bad_request",
            format!("this broker verifies no {:?} evidence", r.kind),
        ));
    };
    let (der, alg) = v
        .enrol(&r.public_key)
        .map_err(|e| api(400, "bad_request", e))?;
    let store = b.releaser.store.clone();
    let id = r.licence.clone();
    let known = blocking(move || Ok(store.licences()?.iter().any(|l| l.id == id))).await?;
    if !known {
        return Err(api(
            404,
            "unknown_licence",
            format!("no licence {:?}", r.licence),
        ));
    }
    let k = store::AttestationKey {
        licence_id: r.licence,
        machine_id: r.machine_id,
        kind: r.kind,
        alg: alg.into(),
        public_key: der,
        created: now_unix(),
    };
    let fingerprint = tpm::fingerprint(&k.public_key);
    let answer = json!({"licence": k.licence_id, "machine_id": k.machine_id, "kind": k.kind,
                        "alg": k.alg, "fingerprint": fingerprint});
    let done = format!("enrolled {} attestation key {fingerprint}", k.alg);
    let store = b.releaser.store.clone();
    blocking(move || store.enrol_attestation_key(&k)).await?;
    Ok((StatusCode::CREATED, answer, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_v4_as_v4() {
        let k = |s: &str| rate_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        let l = RateLimiter {
            per_minute: 2,
            seen: Mutex::default(),
        };
        // A fresh address in the same /64 shares the budget.
        assert!(l.allow("2001:db8::1".parse().unwrap()));
        assert!(l.allow("2001:db8::2".parse().unwrap()));
        assert!(!l.allow("2001:db8::3".parse().unwrap()));
        assert!(l.allow("2001:db8:0:1::3".parse().unwrap()));
    }

    #[test]
    fn the_rate_table_never_grows_past_its_bound() {
        let l = RateLimiter {
            per_minute: 10,
            seen: Mutex::default(),
        };
        for i in 0..RATE_CLIENTS_MAX as u32 + 10 {
            let _ = l.allow(IpAddr::V4(i.into()));
        }
        assert_eq!(l.seen.lock().unwrap().clients.len(), RATE_CLIENTS_MAX);
        // Known clients keep their budget; new ones wait for a window.
        assert!(l.allow(IpAddr::V4(5u32.into())));
        assert!(!l.allow(IpAddr::V4(u32::MAX.into())));
    }
}
