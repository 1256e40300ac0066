//! Atomic output: write aside, fsync, rename (DESIGN property 10).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::crypto;
use crate::error::{Error, Result};

/// A temporary file beside its destination; renamed over it on `commit`,
/// removed if dropped before.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
}

impl AtomicFile {
    /// Create the temporary file. Fails with `OutputExists` when `dest` exists
    /// and `overwrite` is false.
    pub(crate) fn create(dest: &Path, overwrite: bool) -> Result<AtomicFile> {
        Self::create_inner(dest, overwrite, false)
    }

    /// Create the temporary file for a secret: mode 0600 from its creation
    /// (never the mode of what `dest` is or points to), and `dest` counts as
    /// existing when it is a link, even a dangling one. `commit` renames over
    /// `dest`, which replaces a symbolic link itself, never its target.
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
        let rnd: [u8; 6] = crypto::random_array()?;
        let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(".{}.{suffix}.tmp", name.to_string_lossy()));
        // Replacing a file keeps its permissions (a private model stays
        // private); a new file gets the process's defaults.
        let keep_mode = if private {
            None
        } else {
            fs::metadata(dest).ok().map(|m| m.permissions())
        };
        // `create_new` is O_CREAT|O_EXCL: it never follows a link planted at
        // the temporary name.
        let mut o = fs::OpenOptions::new();
        o.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            if private {
                o.mode(0o600);
            }
        }
        let file = o
            .open(&tmp)
            .map_err(|e| Error::output("creating temporary output", e).in_file(&tmp))?;
        if let Some(mode) = keep_mode {
            file.set_permissions(mode)
                .map_err(|e| Error::output("setting the output's mode", e).in_file(&tmp))?;
        }
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            file,
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// fsync, rename over the destination, fsync the directory.
    pub(crate) fn commit(mut self, overwrite: bool) -> Result<()> {
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
