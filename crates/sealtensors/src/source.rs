//! Where a file's bytes come from: a local file, or (feature `remote`) an
//! object in object storage pinned at one version (`remote`). Readers see
//! one `read_exact_at`; the folder helpers below give model folders the
//! same shape in both places (a folder URL is a prefix of objects).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "remote")]
use std::sync::Arc;

#[cfg(not(feature = "remote"))]
use crate::error::RemoteProblem;
use crate::error::{Error, Result};
#[cfg(feature = "remote")]
use crate::remote::RemoteObject;

/// The bytes of one opened file.
pub(crate) enum Source {
    /// A local file.
    Local(File),
    /// A remote object, pinned at the version its first read saw.
    #[cfg(feature = "remote")]
    Remote(Arc<RemoteObject>),
}

/// Whether a path names a remote object (`s3://`, `gs://`, `az://`,
/// `https://` and the other URL forms of docs/object-storage.md), whether or
/// not this build can read it.
pub fn is_remote(p: &Path) -> bool {
    const SCHEMES: &[&str] = &[
        "s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "adl://",
        "https://", "http://",
    ];
    p.to_str()
        .is_some_and(|s| SCHEMES.iter().any(|x| s.starts_with(x)))
}

#[cfg(not(feature = "remote"))]
pub(crate) fn unsupported(p: &Path) -> Error {
    Error::Remote {
        url: crate::error::printable(&p.to_string_lossy(), 512),
        problem: RemoteProblem::Unsupported,
    }
    .in_file(p)
}

impl Source {
    /// Open `path`: a local file, or a remote object when it is a URL.
    pub(crate) fn open(path: &Path) -> Result<Source> {
        if is_remote(path) {
            #[cfg(feature = "remote")]
            {
                let url = path.to_str().unwrap_or_default();
                return Ok(Source::Remote(Arc::new(RemoteObject::open(url)?)));
            }
            #[cfg(not(feature = "remote"))]
            return Err(unsupported(path));
        }
        File::open(path)
            .map(Source::Local)
            .map_err(|e| Error::io("opening", e))
    }

    /// Its size in bytes.
    pub(crate) fn len(&self) -> Result<u64> {
        match self {
            Source::Local(f) => f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| Error::io("reading file size", e)),
            #[cfg(feature = "remote")]
            Source::Remote(r) => Ok(r.len()),
        }
    }

    /// Fill `buf` from `offset`; `what` names the read in an I/O error.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        match self {
            Source::Local(f) => f
                .read_exact_at(buf, offset)
                .map_err(|e| Error::io(what.to_string(), e)),
            #[cfg(feature = "remote")]
            Source::Remote(r) => r.read_exact_at(buf, offset),
        }
    }

    /// The local file, `None` for a remote object.
    pub(crate) fn local(&self) -> Option<&File> {
        match self {
            Source::Local(f) => Some(f),
            #[cfg(feature = "remote")]
            Source::Remote(_) => None,
        }
    }

    /// Whether reads go over the network (worth many in flight at once).
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self, Source::Local(_))
    }

    /// The bytes of one ranged request, for a remote object; `None` for a
    /// local file (read in one call).
    pub(crate) fn request_size(&self) -> Option<usize> {
        match self {
            Source::Local(_) => None,
            #[cfg(feature = "remote")]
            Source::Remote(r) => Some(r.request_size()),
        }
    }

    /// A second handle on the same bytes (the same pinned version).
    pub(crate) fn try_clone(&self) -> Result<Source> {
        match self {
            Source::Local(f) => f
                .try_clone()
                .map(Source::Local)
                .map_err(|e| Error::io("duplicating the file handle", e)),
            #[cfg(feature = "remote")]
            Source::Remote(r) => Ok(Source::Remote(Arc::new(r.try_clone()))),
        }
    }
}

/// Run `f` (parallel reads of many pieces) where it fits: for remote
/// objects in the fetch pool, whose threads are as many as the requests
/// allowed in flight (a piece waits on the network far more than on a
/// core); for local files on the global pool, one thread a core.
pub(crate) fn in_io_pool<R: Send>(remote: bool, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "remote")]
    if remote {
        if let Some(pool) = crate::remote::fetch_pool() {
            return pool.install(f);
        }
    }
    let _ = remote;
    f()
}

// ---- folders: local directories, or prefixes of objects -------------------------------------

/// Whether `p` is a model folder: a local directory, or a URL that does
/// not name a `.safetensors` object (a prefix).
pub(crate) fn is_folder(p: &Path) -> bool {
    if is_remote(p) {
        return !p.to_string_lossy().ends_with(".safetensors");
    }
    p.is_dir()
}

/// `dir` joined with a file name (a URL keeps its `//`).
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    if is_remote(dir) {
        let d = dir.to_string_lossy();
        return PathBuf::from(format!("{}/{name}", d.trim_end_matches('/')));
    }
    dir.join(name)
}

/// The folder a file lies in (`.` for a bare local file name).
pub(crate) fn folder_of(path: &Path) -> PathBuf {
    if is_remote(path) {
        let s = path.to_string_lossy();
        let s = s.trim_end_matches('/');
        return PathBuf::from(s.rsplit_once('/').map_or(s, |(d, _)| d));
    }
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Refuse an output that is a URL: sealtensors writes local files only
/// (the URL would otherwise become a local path like `s3:/bucket/...`).
pub(crate) fn local_output(p: &Path) -> Result<()> {
    if is_remote(p) {
        return Err(Error::Config(
            "outputs are local files or folders; write locally, then upload with the store's own tools".into(),
        )
        .in_file(p));
    }
    Ok(())
}

/// Refuse an input that is a URL where only local inputs are read (the
/// files sealed or converted: work on a local copy).
pub(crate) fn local_input(p: &Path) -> Result<()> {
    if is_remote(p) {
        return Err(Error::Config(
            "the input is a URL: seal and convert read a local file or folder (their output may be a URL)"
                .into(),
        )
        .in_file(p));
    }
    Ok(())
}

/// A stable name for a file or folder: the canonical local path, or the
/// URL itself (object keys have no links or `..`).
pub(crate) fn canonical(p: &Path) -> Result<PathBuf> {
    if is_remote(p) {
        return Ok(PathBuf::from(p.to_string_lossy().trim_end_matches('/')));
    }
    std::fs::canonicalize(p).map_err(|e| Error::io("resolving", e).in_file(p))
}

/// Whether a file exists (a remote one: one small request).
pub(crate) fn exists(p: &Path) -> Result<bool> {
    if is_remote(p) {
        #[cfg(feature = "remote")]
        {
            return crate::remote::exists(&p.to_string_lossy());
        }
        #[cfg(not(feature = "remote"))]
        return Err(unsupported(p));
    }
    Ok(p.exists())
}

/// A small file (an index, a model's config) read whole, local or at a URL,
/// `None` when it does not exist; more than `max` bytes is an error.
pub fn read_small(p: &Path, max: usize) -> Result<Option<Vec<u8>>> {
    if is_remote(p) {
        #[cfg(feature = "remote")]
        {
            return crate::remote::read_small(&p.to_string_lossy(), max);
        }
        #[cfg(not(feature = "remote"))]
        return Err(unsupported(p));
    }
    if !p.exists() {
        return Ok(None);
    }
    let len = std::fs::metadata(p)
        .map_err(|e| Error::io("reading", e).in_file(p))?
        .len();
    if len > max as u64 {
        return Err(Error::LimitExceeded {
            what: "small file (index, config) size",
            got: len,
            max: max as u64,
        }
        .in_file(p));
    }
    std::fs::read(p)
        .map(Some)
        .map_err(|e| Error::io("reading", e).in_file(p))
}

/// A folder's index as read while listing it: `None` when it was not read
/// (the caller reads it), `Some(None)` when it was found absent.
pub(crate) type IndexRead = Option<Option<Vec<u8>>>;

/// The `.safetensors` objects directly under a folder URL, sorted; for a
/// store without listing (`https`), the shards its index names, or
/// `model.safetensors`, with the index as read (so that the same version
/// is checked later, [`IndexRead`]).
pub(crate) fn remote_weight_files(dir: &Path) -> Result<(Vec<PathBuf>, IndexRead)> {
    #[cfg(feature = "remote")]
    {
        let url = dir.to_string_lossy();
        if let Some(found) = crate::remote::list_weights(&url)? {
            return Ok((found, None));
        }
        let index = join(dir, crate::model::INDEX_FILE);
        let Some(text) = read_small(&index, crate::model::MAX_INDEX_BYTES)? else {
            return Ok((vec![join(dir, "model.safetensors")], Some(None)));
        };
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::container(format!("the index is not JSON: {e}")).in_file(&index))?;
        let mut names: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.dedup();
        if names
            .iter()
            .any(|n| !crate::model::is_bare_file_name(n) || n.contains(['%', '?', '#']))
        {
            return Err(Error::container(
                "the index names a file outside its folder (or with %, ? or #, which a URL would not read as itself)",
            )
            .in_file(&index));
        }
        if names.len() as u64 > crate::seal::MAX_SHARDS {
            return Err(Error::container(format!(
                "the index names {} files, more than the {} shards a model may have",
                names.len(),
                crate::seal::MAX_SHARDS
            ))
            .in_file(&index));
        }
        Ok((
            names.iter().map(|n| join(dir, n)).collect(),
            Some(Some(text)),
        ))
    }
    #[cfg(not(feature = "remote"))]
    Err(unsupported(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_remote_and_keep_their_slashes() {
        for u in [
            "s3://b/k.safetensors",
            "gs://b/m",
            "az://c/m",
            "https://h/m",
        ] {
            assert!(is_remote(Path::new(u)), "{u}");
        }
        for p in ["model.safetensors", "/tmp/s3://x", "s3:/b/k", "file:///x"] {
            assert!(!is_remote(Path::new(p)), "{p}");
        }
        let dir = Path::new("s3://bucket/model/");
        assert_eq!(
            join(dir, "a.safetensors"),
            Path::new("s3://bucket/model/a.safetensors")
        );
        assert_eq!(
            folder_of(Path::new("s3://bucket/model/a.safetensors")),
            Path::new("s3://bucket/model")
        );
        assert!(is_folder(Path::new("s3://bucket/model")));
        assert!(!is_folder(Path::new("s3://bucket/model/a.safetensors")));
        assert_eq!(
            canonical(Path::new("s3://bucket/model/")).unwrap(),
            Path::new("s3://bucket/model")
        );
    }

    #[cfg(not(feature = "remote"))]
    #[test]
    fn without_the_feature_a_url_says_so() {
        let e = Source::open(Path::new("s3://bucket/x.safetensors"))
            .err()
            .unwrap();
        assert!(matches!(
            e.kind(),
            Error::Remote {
                problem: RemoteProblem::Unsupported,
                ..
            }
        ));
    }
}
