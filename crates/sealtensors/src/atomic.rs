//! Atomic output: write aside, fsync, rename (SPEC §8.4).
//!
//! A temporary is named `.<name>.<pid>.<random>.tmp`, beside its destination,
//! and is mode 0600 (a folder: 0700) while it is written: it may hold
//! plaintext (`unseal`). It gets its final mode only when it is renamed into
//! place. A process killed mid-write leaves its temporary behind; the next
//! write to the same destination removes every such temporary whose owner
//! is this user and whose process is gone.

use std::fs::{self, File, Permissions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::crypto;
use crate::error::{Error, Result};

/// A temporary file beside its destination; renamed over it on `commit`,
/// removed if dropped before.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    final_mode: Permissions,
}

impl AtomicFile {
    /// Create the temporary file. Fails with `OutputExists` when `dest` exists
    /// and `overwrite` is false.
    pub(crate) fn create(dest: &Path, overwrite: bool) -> Result<AtomicFile> {
        Self::create_inner(dest, overwrite, false)
    }

    /// Create the temporary file for a secret: it stays 0600 when renamed
    /// into place (never the mode of what `dest` is or points to), and `dest`
    /// counts as existing when it is a link, even a dangling one. `commit`
    /// renames over `dest`, which replaces a symbolic link itself, never its
    /// target.
    pub(crate) fn create_private(dest: &Path, overwrite: bool) -> Result<AtomicFile> {
        Self::create_inner(dest, overwrite, true)
    }

    fn create_inner(dest: &Path, overwrite: bool, private: bool) -> Result<AtomicFile> {
        // `symlink_metadata`: a link at `dest` is something there.
        let exists = if private {
            fs::symlink_metadata(dest).is_ok()
        } else {
            dest.exists()
        };
        if !overwrite && exists {
            return Err(Error::OutputExists(dest.to_path_buf()));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| Error::ApiMisuse(format!("{} has no file name", dest.display())))?;
        let tmp = temp_name(&dir, &name.to_string_lossy())?;
        // Replacing a file keeps its permissions (a private model stays
        // private); a new file gets the process's defaults (umask). The
        // temporary is 0600 from its creation (O_CREAT|O_EXCL with that
        // mode): no other user can open it while it holds plaintext.
        let keep_mode = if private {
            None
        } else {
            fs::metadata(dest).ok().map(|m| m.permissions())
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::output("creating temporary output", e).in_file(&tmp))?;
        let created = file
            .metadata()
            .map_err(|e| Error::output("reading temporary output", e).in_file(&tmp));
        let created = match created {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let final_mode = if private {
            Permissions::from_mode(0o600)
        } else {
            keep_mode.unwrap_or_else(|| Permissions::from_mode(0o666 & !umask()))
        };
        remove_stale(&dir, &name.to_string_lossy(), created.uid(), &tmp);
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            file,
            final_mode,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Give the file its final mode, fsync, move it over the destination
    /// (without `overwrite`, never replacing anything there), fsync the
    /// directory.
    pub(crate) fn commit(mut self, overwrite: bool) -> Result<()> {
        self.file
            .set_permissions(self.final_mode.clone())
            .map_err(|e| Error::output("setting the output's mode", e).in_file(&self.tmp))?;
        self.file
            .sync_all()
            .map_err(|e| Error::output("syncing output", e).in_file(&self.tmp))?;
        if !overwrite {
            // A hard link never replaces what is there (a link included):
            // no window between the check and the rename.
            match fs::hard_link(&self.tmp, &self.dest) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.tmp);
                    self.tmp = PathBuf::new();
                    sync_parent(&self.dest);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::OutputExists(self.dest.clone()));
                }
                // No hard links here (some file systems): check, then rename.
                Err(_) if fs::symlink_metadata(&self.dest).is_ok() => {
                    return Err(Error::OutputExists(self.dest.clone()));
                }
                Err(_) => {}
            }
        }
        fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::output("renaming output into place", e).in_file(&self.dest))?;
        sync_parent(&self.dest);
        self.tmp = PathBuf::new();
        Ok(())
    }
}

/// fsync the folder holding `dest`, so the rename is durable (best effort).
fn sync_parent(dest: &Path) {
    if let Some(dir) = dest.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `.<name>.<pid>.<random>.tmp` in `dir`.
pub(crate) fn temp_name(dir: &Path, name: &str) -> Result<PathBuf> {
    let rnd: [u8; 6] = crypto::random_array()?;
    let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!(".{name}.{}.{suffix}.tmp", std::process::id())))
}

/// This process's umask, read from `/proc/self/status` (std has no umask
/// call, and libc's is unsafe); 0o022 where it cannot be read.
pub(crate) fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .map_or(0o022, |m| m & 0o777)
}

/// Remove temporaries of `name` in `dir` left by processes of this user
/// (`uid`) that no longer run (killed mid-write). Only in a folder this
/// user owns and no one else may write to: in a shared folder another user
/// could rename something of ours to a stale-looking name. Best effort:
/// anything it cannot read or remove is left alone.
pub(crate) fn remove_stale(dir: &Path, name: &str, uid: u32, keep: &Path) {
    let private_dir = fs::metadata(dir).is_ok_and(|m| m.uid() == uid && m.mode() & 0o022 == 0);
    if !private_dir {
        return;
    }
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == keep {
            continue;
        }
        let file_name = e.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        // <pid>.<12 hex digits>
        let Some((pid, rnd)) = rest.split_once('.') else {
            continue;
        };
        let ours = rnd.len() == 12 && rnd.bytes().all(|b| b.is_ascii_hexdigit());
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !ours || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.uid() != uid {
            continue;
        }
        if m.file_type().is_dir() {
            let _ = fs::remove_dir_all(&p);
        } else if m.file_type().is_file() {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Why a [`PrivateDir`] could not be made.
pub(crate) enum PrivateDirError {
    /// The system's random generator failed (for the name).
    Random(Error),
    /// Creating the folder failed.
    Create {
        /// The folder that was to be made.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A private temporary folder, `$TMPDIR/<prefix>-<24 random hex>`, created
/// anew with mode 0700 (never an existing path, so never a planted link),
/// removed with its contents when dropped.
pub(crate) struct PrivateDir(PathBuf);

impl PrivateDir {
    pub(crate) fn create(prefix: &str) -> std::result::Result<PrivateDir, PrivateDirError> {
        let r: [u8; 12] = crypto::random_array().map_err(PrivateDirError::Random)?;
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("{prefix}-{name}"));
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(&path) {
            Ok(()) => Ok(PrivateDir(path)),
            Err(source) => Err(PrivateDirError::Create { path, source }),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
