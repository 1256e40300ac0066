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
        if !overwrite && dest.exists() {
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
        let keep_mode = fs::metadata(dest).ok().map(|m| m.permissions());
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
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
        if !overwrite && self.dest.exists() {
            return Err(Error::OutputExists(self.dest.clone()));
        }
        fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::output("renaming output into place", e).in_file(&self.dest))?;
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
