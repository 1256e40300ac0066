//! Objects in object storage read in place (feature `remote`,
//! docs/object-storage.md): `s3://`, `gs://`, `az://` and `https://` URLs
//! through Apache Arrow's `object_store`, ranged and lazy.
//!
//! - **One version.** The first request (a speculative read of the file's
//!   head, [`RemoteOptions::head_bytes`]) pins the object's ETag (and its
//!   version id where the store keeps versions). Every later request asks
//!   for that version (`If-Match`, and the version id), and every answer's
//!   ETag is compared with the pinned one: an object replaced mid-load is
//!   the error [`RemoteProblem::Changed`], never a mix of two versions. An
//!   object served without an ETag or version cannot be pinned and is
//!   refused.
//! - **Header.** The speculative read covers the 8-byte length and, for all
//!   but very large headers, the header itself: opening a file costs one
//!   request, two at most.
//! - **Data.** A read is cut into requests of [`RemoteOptions::request_size`]
//!   bytes, at most [`RemoteOptions::concurrency`] in flight per store, each
//!   streamed straight into the caller's buffer (an engine slab), where it
//!   is then authenticated and decrypted as a local read would be.
//! - **Faults.** Connection errors, timeouts, 5xx and 429 answers are
//!   retried by `object_store` with bounded exponential backoff
//!   ([`RemoteOptions::retries`], [`RemoteOptions::retry_timeout`]); a body
//!   cut short is resumed from where it stopped, at the same ETag. What is
//!   left after the retries is an error; the buffer is then zeroed by the
//!   reader as on every failed read.
//! - **Nothing on disk.** Bytes go from the socket to the caller's memory.
//!
//! Credentials come from each store's own chain (`object_store`'s
//! `from_env` builders: `AWS_*`, `GOOGLE_*`, `AZURE_*` variables, web
//! identity, container and instance metadata); `AWS_ENDPOINT_URL` points at
//! an S3-compatible store (plain `http://` only when the endpoint says so),
//! `SEALTENSORS_CA_FILE` adds a PEM root certificate for HTTPS.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig,
};
use tokio::sync::Semaphore;

use crate::error::{Error, RemoteProblem, Result};

/// How remote objects are read. Defaults, or the environment
/// ([`RemoteOptions::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Bytes per ranged request (default 8 MiB).
    pub request_size: usize,
    /// Requests in flight at once per store (default 16).
    pub concurrency: usize,
    /// Bytes of the speculative first read that covers the header (default
    /// 256 KiB).
    pub head_bytes: usize,
    /// Retries of one request (default 6).
    pub retries: usize,
    /// The longest one request is retried for (default 60 s).
    pub retry_timeout: Duration,
    /// The longest one request may take, body included (default 120 s).
    pub timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            request_size: 8 << 20,
            concurrency: 16,
            head_bytes: 256 << 10,
            retries: 6,
            retry_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(120),
        }
    }
}

/// A positive integer from the environment, or `default`.
fn env_number(name: &str, default: usize, max: usize) -> Result<usize> {
    parse_number(name, std::env::var(name).ok().as_deref(), default, max)
}

/// `value` (of the setting `name`) as a whole number from 1 to `max`.
fn parse_number(name: &str, value: Option<&str>, default: usize, max: usize) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Error::Remote {
                url: name.to_string(),
                problem: RemoteProblem::Config(format!(
                    "{name}={v:?} is not a whole number from 1 to {max}"
                )),
            }),
        },
    }
}

impl RemoteOptions {
    /// The defaults, changed by `SEALTENSORS_REMOTE_REQUEST_SIZE` (bytes),
    /// `SEALTENSORS_REMOTE_CONCURRENCY` and `SEALTENSORS_REMOTE_RETRIES`.
    pub fn from_env() -> Result<RemoteOptions> {
        let d = RemoteOptions::default();
        Ok(RemoteOptions {
            request_size: env_number("SEALTENSORS_REMOTE_REQUEST_SIZE", d.request_size, 1 << 30)?
                .max(4096),
            concurrency: env_number("SEALTENSORS_REMOTE_CONCURRENCY", d.concurrency, 256)?,
            retries: env_number("SEALTENSORS_REMOTE_RETRIES", d.retries, 100)?,
            ..d
        })
    }
}

/// The runtime that drives every store's requests, for this process: a
/// child made by `fork` (a DataLoader worker) inherits the parent's runtime
/// without its threads, so it gets a new one (the old one is leaked, never
/// dropped: dropping it would wait for threads that do not exist there).
fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    static RT: Mutex<Option<(u32, Arc<tokio::runtime::Runtime>)>> = Mutex::new(None);
    let mut rt = RT.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((owner, r)) = rt.as_ref() {
        if *owner == pid {
            return Ok(Arc::clone(r));
        }
    }
    if let Some(stale) = rt.take() {
        std::mem::forget(stale);
    }
    let r = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sealtensors-remote")
        .enable_all()
        .build()
        .map_err(|e| Error::Remote {
            url: String::new(),
            problem: RemoteProblem::Config(format!("cannot start the I/O runtime: {e}")),
        })?;
    let r = Arc::new(r);
    *rt = Some((pid, Arc::clone(&r)));
    Ok(r)
}

/// Run `f` to completion on the runtime, from a caller's thread. A caller
/// that is itself inside a tokio runtime (where blocking on another one
/// would panic) waits on a helper thread instead.
fn block_on<F>(f: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join()).map_err(|_| Error::Remote {
        url: String::new(),
        problem: RemoteProblem::Transfer("the I/O thread stopped".into()),
    })
}

/// The threads that fill many pieces of remote objects at once (the engine's
/// batches, `read_tensors`): as many as the requests allowed in flight, at
/// least one a core. `None` if it cannot start (the caller's pool is used).
pub(crate) fn fetch_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = RemoteOptions::from_env()
            .map(|o| o.concurrency)
            .unwrap_or(RemoteOptions::default().concurrency);
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(rayon::current_num_threads()))
            .thread_name(|i| format!("sealtensors-fetch-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// A store and the limit on its requests in flight, shared by every object
/// of the same bucket (or host) in this process.
struct Store {
    store: Arc<dyn ObjectStore>,
    /// The same store's multipart API (S3, GCS, Azure): outputs are
    /// written through it. `https` has none: it is read-only.
    multipart: Option<Arc<dyn MultipartStore>>,
    limit: Arc<Semaphore>,
    /// `https` stores have no listing: folders are read through their index.
    listable: bool,
}

fn remote_err(url: &str, problem: RemoteProblem) -> Error {
    let url = shown(url);
    Error::Remote {
        url: crate::error::printable(&url, 512),
        problem,
    }
    .in_file(url)
}

/// A URL as errors show it: without user, password, query or fragment
/// (where presigned tokens and passwords would be).
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => url
            .split(['?', '#', '@'])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// What an `object_store` error means for the user.
fn classify(e: object_store::Error) -> RemoteProblem {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => RemoteProblem::NotFound,
        E::Precondition { .. } => RemoteProblem::Changed(
            "the store refused the pinned ETag (If-Match): the object was replaced".into(),
        ),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            RemoteProblem::Denied(source.to_string())
        }
        other => {
            let text = other.to_string();
            // A body resumed after a cut found another ETag.
            if text.contains("ETag") && text.contains("mismatch") {
                RemoteProblem::Changed(text)
            } else {
                RemoteProblem::Transfer(text)
            }
        }
    }
}

fn client_options(opts: &RemoteOptions, allow_http: bool) -> Result<ClientOptions> {
    let mut c = ClientOptions::new()
        .with_timeout(opts.timeout)
        .with_connect_timeout(Duration::from_secs(10))
        .with_pool_max_idle_per_host(opts.concurrency.max(1));
    if allow_http {
        c = c.with_allow_http(true);
    }
    if let Ok(ca) = std::env::var("SEALTENSORS_CA_FILE") {
        let pem = std::fs::read(&ca).map_err(|e| {
            remote_err(
                &ca,
                RemoteProblem::Config(format!("SEALTENSORS_CA_FILE cannot be read: {e}")),
            )
        })?;
        let cert = object_store::Certificate::from_pem(&pem).map_err(|e| {
            remote_err(
                &ca,
                RemoteProblem::Config(format!("SEALTENSORS_CA_FILE is not a PEM certificate: {e}")),
            )
        })?;
        c = c.with_root_certificate(cert);
    }
    Ok(c)
}

fn retry_config(opts: &RemoteOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: opts.retries,
        retry_timeout: opts.retry_timeout,
    }
}

/// Whether plain HTTP may be used to `url`: a loopback host, or anywhere
/// with `SEALTENSORS_ALLOW_HTTP=1`.
fn http_allowed(url: &str) -> bool {
    if std::env::var("SEALTENSORS_ALLOW_HTTP").as_deref() == Ok("1") {
        return true;
    }
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// The store that serves `url`, and the object's path in it.
fn store_for(url: &str, opts: &RemoteOptions) -> Result<(Arc<Store>, ObjectPath)> {
    let bad = |why: String| remote_err(url, RemoteProblem::BadUrl(why));
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    // What the object is must be the URL's path alone: a query (a version
    // id, a presigned token), a fragment, a password, or escapes (`%2F`
    // would turn a file name into a path) would be dropped or decoded out
    // of sight, so they are refused.
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "a query (?...) or fragment (#...) is not read; name the object by its path alone"
                .into(),
        ));
    }
    if parsed.password().is_some() {
        return Err(bad(
            "a password in the URL is refused (it would show in errors and logs); give credentials through the store's environment variables".into(),
        ));
    }
    if parsed.path().contains('%') {
        return Err(bad(
            "object keys with escaped characters (%..) are not read; rename the objects".into(),
        ));
    }
    let scheme = parsed.scheme().to_string();
    let host = parsed.host_str().unwrap_or_default().to_string();
    // One store per bucket (or host) and configuration: the variables the
    // builders read are part of the key, hashed (they hold credentials).
    let mut config: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            [
                "AWS_",
                "GOOGLE_",
                "AZURE_",
                "SEALTENSORS_CA_FILE",
                "SEALTENSORS_REMOTE_",
                "SEALTENSORS_ALLOW_HTTP",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .collect();
    config.sort();
    let digest = crate::crypto::sha256(format!("{config:?}").as_bytes());
    // The user part names the Azure container (`abfss://container@account`);
    // the process id keeps a forked child off its parent's connections.
    let key = format!(
        "{scheme}://{}@{host}:{} {} {}",
        parsed.username(),
        parsed.port().unwrap_or(0),
        crate::keys::b64(&digest),
        std::process::id()
    );
    let path = ObjectPath::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
    static STORES: OnceLock<Mutex<HashMap<String, Arc<Store>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    if let Some(s) = stores.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok((Arc::clone(s), path));
    }
    let build = |e: object_store::Error| remote_err(url, RemoteProblem::Config(e.to_string()));
    type Stores = (Arc<dyn ObjectStore>, Option<Arc<dyn MultipartStore>>, bool);
    fn writable<S: ObjectStore + MultipartStore>(s: S) -> Stores {
        let s = Arc::new(s);
        (s.clone(), Some(s), true)
    }
    let (store, multipart, listable): Stores = match scheme.as_str() {
        "s3" | "s3a" => {
            // A plain http:// endpoint: a store on this machine (loopback),
            // or anywhere with SEALTENSORS_ALLOW_HTTP=1.
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default();
            let http_endpoint = endpoint.starts_with("http://");
            if http_endpoint && !http_allowed(&endpoint) {
                return Err(remote_err(
                    url,
                    RemoteProblem::Config(
                        "AWS_ENDPOINT_URL is plain http:// to another machine: requests and data would travel in clear; use https://, or set SEALTENSORS_ALLOW_HTTP=1 for a store on a trusted network".into(),
                    ),
                ));
            }
            let b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_client_options(client_options(opts, http_endpoint)?)
                .with_retry(retry_config(opts));
            writable(b.build().map_err(build)?)
        }
        "gs" => {
            let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_client_options(client_options(opts, false)?)
                .with_retry(retry_config(opts));
            writable(b.build().map_err(build)?)
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_client_options(client_options(opts, false)?)
                .with_retry(retry_config(opts));
            writable(b.build().map_err(build)?)
        }
        "https" | "http" => {
            let allow_http = scheme == "http";
            if allow_http && !http_allowed(url) {
                return Err(bad(
                    "plain http:// is refused (credentials and requests would travel in clear); use https://, or set SEALTENSORS_ALLOW_HTTP=1 for a server on a trusted network".into(),
                ));
            }
            let origin = &parsed[..url::Position::BeforePath];
            let b = object_store::http::HttpBuilder::new()
                .with_url(origin)
                .with_client_options(client_options(opts, allow_http)?)
                .with_retry(retry_config(opts));
            (Arc::new(b.build().map_err(build)?), None, false)
        }
        other => return Err(bad(format!("unknown scheme {other:?}"))),
    };
    let s = Arc::new(Store {
        store,
        multipart,
        limit: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        listable,
    });
    stores
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, Arc::clone(&s));
    Ok((s, path))
}

/// [`store_for`] with the options of the environment.
fn store_of(url: &str) -> Result<(Arc<Store>, ObjectPath)> {
    store_for(url, &RemoteOptions::from_env()?)
}

/// One remote object, pinned at the version its first read saw.
pub(crate) struct RemoteObject {
    url: String,
    store: Arc<Store>,
    path: ObjectPath,
    size: u64,
    etag: Option<String>,
    version: Option<String>,
    /// The first bytes, from the speculative first read (the header).
    head: Vec<u8>,
    opts: RemoteOptions,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

impl RemoteObject {
    /// Open `url`: one ranged read of its first bytes, which pins its ETag.
    pub(crate) fn open(url: &str) -> Result<RemoteObject> {
        let opts = RemoteOptions::from_env()?;
        let (store, path) = store_for(url, &opts)?;
        let want = opts.head_bytes as u64;
        let (meta, head) = block_on(async {
            let _permit = store.limit.acquire().await;
            let r = store
                .store
                .get_opts(
                    &path,
                    GetOptions {
                        range: Some(GetRange::Bounded(0..want)),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| remote_err(url, classify(e)))?;
            let meta = r.meta.clone();
            let range = r.range.clone();
            // object_store refuses a 200 to a ranged request (a server that
            // ignores Range); anything longer than asked is refused here,
            // before a body of any size is read into memory.
            if range.start != 0 || range.end > want || range.end > meta.size {
                return Err(remote_err(
                    url,
                    RemoteProblem::Transfer(format!(
                        "the store answered bytes {range:?} to a request for bytes 0..{want}"
                    )),
                ));
            }
            let mut head = vec![0u8; (range.end - range.start) as usize];
            stream_into(url, r.into_stream(), &mut head, &range).await?;
            Ok((meta, head))
        })??;
        // A weak ETag may stay the same when the bytes change: it pins nothing.
        let etag = meta.e_tag.filter(|e| !e.starts_with("W/"));
        if etag.is_none() && meta.version.is_none() {
            return Err(remote_err(url, RemoteProblem::Unpinnable));
        }
        Ok(RemoteObject {
            url: url.to_string(),
            store,
            path,
            size: meta.size,
            etag,
            version: meta.version,
            head,
            opts,
        })
    }

    /// The object's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.size
    }

    /// The bytes of one ranged request.
    pub(crate) fn request_size(&self) -> usize {
        self.opts.request_size.max(1)
    }

    /// Fill `buf` with the object's bytes from `offset`: served from the
    /// head when it covers them, else in parallel ranged requests of the
    /// pinned version streamed into `buf`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                remote_err(
                    &self.url,
                    RemoteProblem::Transfer(format!(
                        "a read of {} bytes at {offset} runs past the object's {} bytes",
                        buf.len(),
                        self.size
                    )),
                )
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        if end <= self.head.len() as u64 {
            let (a, b) = (offset as usize, end as usize);
            buf.copy_from_slice(&self.head[a..b]);
            return Ok(());
        }
        let step = self.opts.request_size.max(1);
        let parts = buf
            .chunks_mut(step)
            .enumerate()
            .map(|(i, dst)| (offset + (i * step) as u64, dst));
        let fetches: Vec<_> = parts.map(|(at, dst)| self.fetch(at, dst)).collect();
        let in_flight = self.opts.concurrency.max(1);
        block_on(async move {
            futures::stream::iter(fetches)
                .buffer_unordered(in_flight)
                .try_collect::<()>()
                .await
        })?
    }

    /// One ranged request for `dst.len()` bytes at `at`, of the pinned version.
    async fn fetch(&self, at: u64, dst: &mut [u8]) -> Result<()> {
        let err = |p| remote_err(&self.url, p);
        let range: Range<u64> = at..at + dst.len() as u64;
        let _permit = self.store.limit.acquire().await;
        let r = self
            .store
            .store
            .get_opts(
                &self.path,
                GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: self.etag.clone(),
                    version: self.version.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err(classify(e)))?;
        // Every answer must be of the pinned version: its ETag, its version
        // id, its size (a store that ignores If-Match is caught here).
        let now = (&r.meta.e_tag, &r.meta.version, r.meta.size);
        let pinned = (&self.etag, &self.version, self.size);
        let same = (self.etag.is_none() || now.0 == pinned.0)
            && (self.version.is_none() || now.1 == pinned.1)
            && now.2 == pinned.2;
        if !same {
            return Err(err(RemoteProblem::Changed(format!(
                "ETag {}, version {}, {} bytes when the load began; ETag {}, version {}, {} bytes now",
                pinned.0.as_deref().unwrap_or("-"),
                pinned.1.as_deref().unwrap_or("-"),
                pinned.2,
                now.0.as_deref().unwrap_or("-"),
                now.1.as_deref().unwrap_or("-"),
                now.2
            ))));
        }
        if r.range != range {
            return Err(err(RemoteProblem::Transfer(format!(
                "asked for bytes {range:?}, the store answered {:?}",
                r.range
            ))));
        }
        stream_into(&self.url, r.into_stream(), dst, &range).await
    }

    /// Another handle on the same pinned object (nothing is read again).
    pub(crate) fn try_clone(&self) -> RemoteObject {
        RemoteObject {
            url: self.url.clone(),
            store: Arc::clone(&self.store),
            path: self.path.clone(),
            size: self.size,
            etag: self.etag.clone(),
            version: self.version.clone(),
            head: self.head.clone(),
            opts: self.opts.clone(),
        }
    }
}

/// Copy an answer's body into `dst`, which it must fill exactly: a longer
/// body is refused as soon as it overflows, a shorter one at its end.
async fn stream_into(
    url: &str,
    mut body: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    dst: &mut [u8],
    range: &Range<u64>,
) -> Result<()> {
    let mut filled = 0usize;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| remote_err(url, classify(e)))?;
        let Some(slot) = filled
            .checked_add(piece.len())
            .and_then(|end| dst.get_mut(filled..end))
        else {
            return Err(remote_err(
                url,
                RemoteProblem::Transfer(format!(
                    "the answer for bytes {range:?} is longer than asked"
                )),
            ));
        };
        slot.copy_from_slice(&piece);
        filled += piece.len();
    }
    if filled != dst.len() {
        return Err(remote_err(
            url,
            RemoteProblem::Transfer(format!(
                "the answer for bytes {range:?} stopped after {filled} bytes"
            )),
        ));
    }
    Ok(())
}

/// A folder URL's `.safetensors` objects directly under it, sorted (a
/// store with listing), or `None` for a store without listing (`https`).
pub(crate) fn list_weights(dir: &str) -> Result<Option<Vec<PathBuf>>> {
    let (store, path) = store_of(dir)?;
    if !store.listable {
        return Ok(None);
    }
    let prefix = (!path.as_ref().is_empty()).then_some(&path);
    let listing = block_on(store.store.list_with_delimiter(prefix))?
        .map_err(|e| remote_err(dir, classify(e)))?;
    let base = dir.trim_end_matches('/');
    let mut out = Vec::new();
    for n in listing
        .objects
        .iter()
        .filter_map(|m| m.location.filename())
        .filter(|n| n.ends_with(".safetensors"))
    {
        // Only names that read back as themselves (no escapes, no query or
        // fragment characters), and no more than a sealed model's shards.
        if n.contains(['%', '?', '#']) || !crate::model::is_bare_file_name(n) {
            return Err(remote_err(
                dir,
                RemoteProblem::BadUrl(format!(
                    "the folder holds an object named {:?}, which sealtensors does not read (escapes, ? and # are refused); rename it",
                    crate::error::printable(n, 256)
                )),
            ));
        }
        out.push(PathBuf::from(format!("{base}/{n}")));
        if out.len() as u64 > crate::seal::MAX_SHARDS {
            return Err(remote_err(
                dir,
                RemoteProblem::Transfer(format!(
                    "the folder lists more than {} weight files, more than a model has",
                    crate::seal::MAX_SHARDS
                )),
            ));
        }
    }
    out.sort();
    Ok(Some(out))
}

/// A small object read whole (a model's index), or `None` when there is
/// no such object.
pub(crate) fn read_small(url: &str, max: usize) -> Result<Option<Vec<u8>>> {
    let (store, path) = store_of(url)?;
    block_on(async {
        let _permit = store.limit.acquire().await;
        let r = match store.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote_err(url, classify(e))),
        };
        let size = r.meta.size;
        if size > max as u64 || r.range != (0..size) {
            return Err(remote_err(
                url,
                RemoteProblem::Transfer(format!(
                    "{size} bytes (answered {:?}), more than the {max} allowed",
                    r.range
                )),
            ));
        }
        let range = r.range.clone();
        let mut out = vec![0u8; size as usize];
        stream_into(url, r.into_stream(), &mut out, &range).await?;
        Ok(Some(out))
    })?
}

/// Whether an object exists (one HEAD request).
pub(crate) fn exists(url: &str) -> Result<bool> {
    let (store, path) = store_of(url)?;
    let r = block_on(async {
        let _permit = store.limit.acquire().await;
        store.store.head(&path).await
    })?;
    match r {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(remote_err(url, classify(e))),
    }
}

// ---- writing ---------------------------------------------------------------------------

/// The multipart API of the store that serves `url`: outputs go to S3, GCS
/// and Azure; `https://` is read-only.
fn multipart_of(url: &str, store: &Store) -> Result<Arc<dyn MultipartStore>> {
    store.multipart.clone().ok_or_else(|| {
        remote_err(
            url,
            RemoteProblem::BadUrl(
                "https:// URLs are read-only; write to an s3://, gs:// or az:// URL, or to a local path".into(),
            ),
        )
    })
}

/// The smallest part a multipart upload takes (S3's rule; the last part may
/// be shorter), and the most parts one upload may have (S3's 10,000, with
/// room to spare).
const MIN_PART: usize = 5 << 20;
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once for one object: memory is bounded by this many
/// parts, plus the first one, held until the end.
const PARTS_IN_FLIGHT: usize = 4;

/// One object being written (an output of `seal`): the bytes after the
/// header come in file order and go out as the parts of a multipart upload
/// while they come; the header, known only at the end, goes out last as
/// part 0, together with the first part's bytes (held until then so that
/// part 0 is as large as the store requires). The object appears whole when
/// the upload completes, or not at all: an upload that fails or is dropped
/// unfinished is aborted. A small object is one plain `PUT` at the end.
/// Nothing is written to the local disk.
pub(crate) struct RemoteUpload {
    url: String,
    store: Arc<Store>,
    multipart: Arc<dyn MultipartStore>,
    path: ObjectPath,
    part_size: usize,
    /// The bytes that follow the header in part 0.
    first: Vec<u8>,
    /// The part being filled.
    current: Vec<u8>,
    id: Option<MultipartId>,
    /// The next part's number (0 is the header's).
    next: usize,
    in_flight: std::collections::VecDeque<UploadTask>,
    parts: Vec<Option<PartId>>,
    done: bool,
}

/// Room for `n` bytes, or the typed error (a part is tens of MiB).
fn reserve(v: &mut Vec<u8>, n: usize) -> Result<()> {
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        what: "a part of an upload".into(),
        bytes: n,
    })
}

type UploadTask = (usize, tokio::task::JoinHandle<object_store::Result<PartId>>);

impl std::fmt::Debug for RemoteUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteUpload")
            .field("url", &self.url)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl RemoteUpload {
    /// Start writing `url`, which will hold `size` bytes after its header
    /// (the part size is chosen from it). Unless `overwrite`, an object
    /// already there is refused (one `HEAD`; a writer racing this one is
    /// not detected: the last upload to complete wins, whole).
    pub(crate) fn create(url: &str, overwrite: bool, size: u64) -> Result<RemoteUpload> {
        let opts = RemoteOptions::from_env()?;
        let (store, path) = store_for(url, &opts)?;
        let multipart = multipart_of(url, &store)?;
        if path.as_ref().is_empty() || url.ends_with('/') {
            return Err(remote_err(
                url,
                RemoteProblem::BadUrl("an output object needs a name after the bucket".into()),
            ));
        }
        if !overwrite && exists(url)? {
            return Err(Error::OutputExists(PathBuf::from(shown(url))));
        }
        let spread = usize::try_from(size.div_ceil(MAX_PARTS)).unwrap_or(usize::MAX);
        let part_size = opts.request_size.max(MIN_PART).max(spread);
        Ok(RemoteUpload {
            url: url.to_string(),
            store,
            multipart,
            path,
            part_size,
            first: Vec::new(),
            current: Vec::new(),
            id: None,
            next: 1,
            in_flight: Default::default(),
            parts: Vec::new(),
            done: false,
        })
    }

    fn err(&self, e: object_store::Error) -> Error {
        remote_err(&self.url, classify(e))
    }

    /// Append the next bytes of the object (after its header).
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let into = if self.first.len() < self.part_size {
                &mut self.first
            } else {
                &mut self.current
            };
            if into.capacity() == 0 {
                reserve(into, self.part_size)?;
            }
            let take = (self.part_size - into.len()).min(data.len());
            into.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == self.part_size {
                self.send_current()?;
            }
        }
        Ok(())
    }

    /// Upload the part being filled as the next part, waiting first while
    /// too many are in flight.
    fn send_current(&mut self) -> Result<()> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let mp = Arc::clone(&self.multipart);
                let path = self.path.clone();
                let id = block_on(async move { mp.create_multipart(&path).await })?
                    .map_err(|e| self.err(e))?;
                self.id = Some(id.clone());
                id
            }
        };
        let index = self.next;
        self.next += 1;
        let data = std::mem::take(&mut self.current);
        self.spawn_part(id, index, data)?;
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_one()?;
        }
        Ok(())
    }

    fn spawn_part(&mut self, id: MultipartId, index: usize, data: Vec<u8>) -> Result<()> {
        let mp = Arc::clone(&self.multipart);
        let path = self.path.clone();
        let limit = Arc::clone(&self.store.limit);
        let task = runtime()?.spawn(async move {
            let _permit = limit.acquire().await;
            mp.put_part(&path, &id, index, PutPayload::from(data)).await
        });
        self.in_flight.push_back((index, task));
        Ok(())
    }

    /// Wait for the oldest part in flight.
    fn wait_one(&mut self) -> Result<()> {
        let Some((index, task)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = block_on(task)?
            .map_err(|e| {
                remote_err(
                    &self.url,
                    RemoteProblem::Transfer(format!("the upload of part {index} stopped: {e}")),
                )
            })?
            .map_err(|e| self.err(e))?;
        if self.parts.len() <= index {
            self.parts.resize(index + 1, None);
        }
        self.parts[index] = Some(part);
        Ok(())
    }

    /// Write `header` in front of everything written, and make the object
    /// appear, whole.
    pub(crate) fn finish(mut self, header: &[u8]) -> Result<()> {
        let mut head = Vec::new();
        reserve(&mut head, header.len() + self.first.len())?;
        head.extend_from_slice(header);
        head.extend_from_slice(&self.first);
        self.first = Vec::new();
        if self.id.is_none() && self.current.is_empty() {
            // Small enough for one request.
            let (store, path) = (Arc::clone(&self.store), self.path.clone());
            block_on(async move {
                let _permit = store.limit.acquire().await;
                store.store.put(&path, PutPayload::from(head)).await
            })?
            .map_err(|e| self.err(e))?;
            self.done = true;
            return Ok(());
        }
        if !self.current.is_empty() {
            self.send_current()?;
        }
        let Some(id) = self.id.clone() else {
            return Err(Error::Crypto("internal: a multipart upload without an id"));
        };
        self.spawn_part(id.clone(), 0, head)?;
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        let parts = std::mem::take(&mut self.parts)
            .into_iter()
            .collect::<Option<Vec<PartId>>>()
            .ok_or(Error::Crypto("internal: a part of the upload is missing"))?;
        let (mp, path) = (Arc::clone(&self.multipart), self.path.clone());
        block_on(async move { mp.complete_multipart(&path, &id, parts).await })?
            .map_err(|e| self.err(e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for RemoteUpload {
    /// An unfinished upload is aborted, so that its parts are not kept (and
    /// billed) by the store; nothing was ever visible at the URL.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for (_, task) in self.in_flight.drain(..) {
            task.abort();
        }
        if let Some(id) = self.id.take() {
            let (mp, path) = (Arc::clone(&self.multipart), self.path.clone());
            let _ = block_on(async move { mp.abort_multipart(&path, &id).await });
        }
    }
}

/// Check that `url` names an object sealtensors can write and read back
/// (no escapes, query or fragment; a known store), without a request.
pub(crate) fn check_url(url: &str) -> Result<()> {
    store_of(url).map(|_| ())
}

/// Upload a local file to `url` as it is (the other files of a model
/// folder sealed to a bucket: config, tokenizer, index).
pub(crate) fn upload_file(local: &std::path::Path, url: &str, overwrite: bool) -> Result<()> {
    use std::io::Read;
    let io = |e| Error::io("reading", e).in_file(local);
    let mut f = std::fs::File::open(local).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut up = RemoteUpload::create(url, overwrite, size)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        up.write(&buf[..n])?;
    }
    up.finish(&[])
}

/// Check that a folder URL can take a model's files named `names`: it must
/// hold no object unless `overwrite`, and even then no weight file other
/// than those (a stale shard beside new ones would make the folder a mix of
/// two sealings; the loader would refuse it, but the writer says so first).
pub(crate) fn check_folder_output(dir: &str, names: &[String], overwrite: bool) -> Result<()> {
    let (store, path) = store_of(dir)?;
    multipart_of(dir, &store)?;
    if path.as_ref().is_empty() {
        return Err(remote_err(
            dir,
            RemoteProblem::BadUrl(
                "a model is written under a folder in the bucket (s3://bucket/model), not at its root".into(),
            ),
        ));
    }
    let listing = block_on(store.store.list_with_delimiter(Some(&path)))?
        .map_err(|e| remote_err(dir, classify(e)))?;
    let any = !listing.objects.is_empty() || !listing.common_prefixes.is_empty();
    if any && !overwrite {
        return Err(Error::OutputExists(PathBuf::from(shown(dir))));
    }
    if let Some(stale) = listing
        .objects
        .iter()
        .filter_map(|m| m.location.filename())
        .find(|n| n.ends_with(".safetensors") && !names.iter().any(|k| k == n))
    {
        return Err(remote_err(
            dir,
            RemoteProblem::Config(format!(
                "the folder already holds the weight file {:?}, which this model does not have: it would be left beside the new shards; delete it, or write to another folder",
                crate::error::printable(stale, 256)
            )),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_bounded() {
        assert_eq!(parse_number("X", None, 16, 256).unwrap(), 16);
        assert_eq!(parse_number("X", Some(" 4 "), 16, 256).unwrap(), 4);
        for bad in ["0", "-1", "many", "257", ""] {
            let e = parse_number("X", Some(bad), 16, 256).unwrap_err();
            assert_eq!(e.class(), crate::ErrorClass::Usage, "{bad}: {e}");
        }
    }

    #[test]
    fn urls_that_cannot_be_used_are_usage_errors() {
        let opts = RemoteOptions::default();
        for bad in [
            "s3://",
            "ftp://host/x",
            "http://10.0.0.1:1/x.safetensors",
            "s3://b/k.safetensors?versionId=1",
            "s3://b/k.safetensors#x",
            "https://u:pw@host/k.safetensors",
            "s3://b/sub%2Fk.safetensors",
        ] {
            let e = store_for(bad, &opts).err().unwrap();
            assert!(
                matches!(
                    e.kind(),
                    Error::Remote {
                        problem: RemoteProblem::BadUrl(_) | RemoteProblem::Config(_),
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
    }
}
