//! Hugging Face model folders (SPEC §8.5): `model.safetensors`, or shards
//! `model-0000X-of-0000N.safetensors` with `model.safetensors.index.json`.
//! One model key serves every shard, so one key release opens the whole
//! model. Tensor names, dtypes, shapes and sizes do not change when sealing,
//! so the index file stays valid and is copied as it is; every other file
//! (config, tokenizer) is copied unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

use crate::atomic;
use crate::error::{printable, Error, Result};
use crate::format::read_header;
use crate::read::{OpenOptions, SealedFile};
use crate::rekey::{rekey_file, rekey_opened, RekeyOptions};
use crate::seal::{ModelInfo, Shard, MAX_SHARDS};
use crate::source;
use crate::write::Sealer;

/// The index file name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The largest index read (an index lists tensor names: a few MiB at most).
pub(crate) const MAX_INDEX_BYTES: usize = 64 << 20;

fn out<'a>(what: &str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::output(what, e).in_file(p)
}

fn io<'a>(what: &str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(what, e).in_file(p)
}

/// The `.safetensors` files directly in `dir`, sorted. Errors when there is none.
/// A folder URL gives the objects directly under it (or, from a store
/// without listing, the shards its index names).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    weight_files_and_index(dir).map(|(w, _)| w)
}

/// [`weight_files`], with the index when listing the folder read it (a
/// store without listing): checked later in that same version.
fn weight_files_and_index(dir: &Path) -> Result<(Vec<PathBuf>, source::IndexRead)> {
    if source::is_remote(dir) {
        let (out, index) = source::remote_weight_files(dir)?;
        if out.is_empty() {
            return Err(Error::container("the folder holds no .safetensors weights").in_file(dir));
        }
        return Ok((out, index));
    }
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io("listing the model folder", dir))? {
        let p = e.map_err(io("listing the model folder", dir))?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "safetensors") {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::container("the folder holds no .safetensors weights").in_file(dir));
    }
    Ok((out, None))
}

/// A path's last component as text (lossy; empty when it has none).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether an index entry names a file directly in the folder: a bare file
/// name, never a path (SPEC §8.5).
pub(crate) fn is_bare_file_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// Check the index (when present) against the shards' headers: every entry
/// names a file beside the index that holds that tensor.
///
/// For a sealed model the index must also be complete: every tensor of every
/// shard listed, so that no shard is silently skipped by a loader that opens
/// only the files the index names (transformers does).
fn check_index(
    dir: &Path,
    names_by_file: &BTreeMap<String, Vec<String>>,
    complete: bool,
) -> Result<()> {
    check_index_read(dir, None, names_by_file, complete)
}

/// [`check_index`] of the index `read` while listing the folder, if it was.
fn check_index_read(
    dir: &Path,
    read: source::IndexRead,
    names_by_file: &BTreeMap<String, Vec<String>>,
    complete: bool,
) -> Result<()> {
    let p = source::join(dir, INDEX_FILE);
    let text = match read {
        Some(known) => known,
        None => source::read_small(&p, MAX_INDEX_BYTES)?,
    };
    let Some(text) = text else {
        return Ok(());
    };
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::container(format!("index is not JSON: {e}")).in_file(&p))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::container("index has no weight_map").in_file(&p))?;
    let held: HashMap<&str, HashSet<&str>> = names_by_file
        .iter()
        .map(|(f, names)| (f.as_str(), names.iter().map(String::as_str).collect()))
        .collect();
    for (name, file) in map {
        let Some(file) = file.as_str().filter(|f| is_bare_file_name(f)) else {
            return Err(Error::container(format!(
                "index maps tensor \"{}\" to {}, which is not a file name beside the index; an index may only name files in its own folder",
                printable(name, 256),
                printable(&file.to_string(), 256)
            ))
            .in_file(&p));
        };
        if !held.get(file).is_some_and(|n| n.contains(name.as_str())) {
            return Err(Error::container(format!(
                "index maps tensor \"{}\" to \"{}\", which does not hold it",
                printable(name, 256),
                printable(file, 256)
            ))
            .in_file(&p));
        }
    }
    if complete {
        let total: usize = names_by_file.values().map(Vec::len).sum();
        if map.len() != total {
            let missing = names_by_file
                .iter()
                .flat_map(|(f, names)| names.iter().map(move |n| (f, n)))
                .find(|(_, n)| !map.contains_key(n.as_str()));
            let what = missing.map_or_else(String::new, |(f, n)| {
                format!(
                    ": tensor \"{}\" of {} is not in it",
                    printable(n, 256),
                    printable(f, 256)
                )
            });
            return Err(Error::IncompleteModel(format!(
                "the index lists {} tensors but the shards hold {total}{what}; a loader following it would skip weights",
                map.len()
            ))
            .in_file(&p));
        }
    }
    Ok(())
}

/// Check that sealed shards are exactly the shards of one sealing (SPEC §8.5):
/// the same model key, model id and version, the same shard set, every
/// index from 1 to the count present once, nothing else.
fn check_shard_set(dir: &Path, files: &[SealedFile]) -> Result<()> {
    let name = |f: &SealedFile| file_name(f.path());
    let Some(first) = files.first() else {
        return Ok(());
    };
    // Shards of one model: one model key, one model id and version, all
    // sealed or all plain.
    let ident = |f: &SealedFile| {
        f.seal()
            .map(|m| (m.mk_id, m.doc.model.id.clone(), m.doc.model.version.clone()))
    };
    let want = ident(first);
    for f in &files[1..] {
        if ident(f) != want {
            return Err(Error::IncompleteModel(format!(
                "{} and {} are not shards of one sealed model (model key, id or version differ, or one is plain)",
                name(first),
                name(f)
            ))
            .in_file(dir));
        }
    }
    if first.seal().is_none() {
        return Ok(()); // a plain model: nothing binds its files together
    }
    let shards: Vec<(String, Option<Shard>)> = files
        .iter()
        .map(|f| (name(f), f.seal().and_then(|m| m.shard)))
        .collect();
    if shards.len() == 1 {
        return match &shards[0] {
            (_, None) => Ok(()),
            (n, Some(s)) => Err(Error::IncompleteModel(format!(
                "{n} is shard {} of {} of a sealed model, and the folder holds no other shard",
                s.index, s.count
            ))
            .in_file(dir)),
        };
    }
    let mut set = None;
    let mut seen: HashMap<u64, &str> = HashMap::new();
    for (n, s) in &shards {
        let Some(s) = s else {
            return Err(Error::IncompleteModel(format!(
                "the folder holds {} weight files, but {n} is not numbered as a shard of a sealed model (it was sealed on its own, or by a sealtensors older than shard binding)",
                shards.len()
            ))
            .in_file(dir));
        };
        match set {
            None => set = Some((s.set, s.count)),
            Some((id, count)) => {
                if id != s.set || count != s.count {
                    return Err(Error::IncompleteModel(format!(
                        "{n} belongs to another sealing of the model than {} (shard sets differ)",
                        shards[0].0
                    ))
                    .in_file(dir));
                }
            }
        }
        if let Some(other) = seen.insert(s.index, n) {
            return Err(Error::IncompleteModel(format!(
                "{other} and {n} are both shard {} of {}",
                s.index, s.count
            ))
            .in_file(dir));
        }
    }
    let count = set.map_or(0, |(_, c)| c);
    if seen.len() as u64 != count {
        let missing: Vec<String> = (1..=count)
            .filter(|i| !seen.contains_key(i))
            .take(8)
            .map(|i| i.to_string())
            .collect();
        return Err(Error::IncompleteModel(format!(
            "the model was sealed as {count} shards but the folder holds {}; missing: shard {}",
            seen.len(),
            missing.join(", ")
        ))
        .in_file(dir));
    }
    Ok(())
}

// ---- copying the other files of a folder ------------------------------------------------

/// Where symbolic links in a model folder may lead when the folder is
/// copied: inside the folder itself, and, for a Hugging Face hub cache
/// snapshot (`.../snapshots/<revision>/`), into that repository's `blobs/`.
struct LinkRoots {
    roots: Vec<PathBuf>,
}

impl LinkRoots {
    fn of(folder: &Path) -> Result<LinkRoots> {
        let root = fs::canonicalize(folder).map_err(io("resolving the model folder", folder))?;
        let mut roots = vec![root.clone()];
        if let Some(snapshots) = root.parent() {
            if snapshots.file_name().is_some_and(|n| n == "snapshots") {
                if let Some(blobs) = snapshots.parent().map(|r| r.join("blobs")) {
                    // Only a real folder, itself no link: a planted
                    // `blobs -> /` must not widen what links may reach.
                    let real = fs::symlink_metadata(&blobs).is_ok_and(|m| m.file_type().is_dir());
                    if real && fs::canonicalize(&blobs).is_ok_and(|b| b == blobs) {
                        roots.push(blobs);
                    }
                }
            }
        }
        Ok(LinkRoots { roots })
    }

    /// Whether a link's resolved target may be copied: inside the folder,
    /// or a direct child of the hub cache's `blobs/`.
    fn allows(&self, resolved: &Path) -> bool {
        let inside = resolved.starts_with(&self.roots[0]);
        let blob = self.roots[1..]
            .iter()
            .any(|b| resolved.parent() == Some(b.as_path()));
        inside || blob
    }

    /// What `p` is, for copying: a file to copy (a link only when it leads
    /// to a regular file inside the roots), a folder to descend into (never
    /// through a link), or an error naming the link.
    fn classify(&self, p: &Path) -> Result<Entry> {
        let m = fs::symlink_metadata(p).map_err(io("reading", p))?;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(p)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let unsafe_link = || Error::UnsafeLink {
                link: p.to_path_buf(),
                target: printable(&target, 256),
            };
            let resolved = fs::canonicalize(p).map_err(|_| unsafe_link())?;
            let is_file = fs::metadata(&resolved).is_ok_and(|m| m.is_file());
            if is_file && self.allows(&resolved) {
                return Ok(Entry::File);
            }
            return Err(unsafe_link());
        }
        if ft.is_dir() {
            Ok(Entry::Dir)
        } else if ft.is_file() {
            Ok(Entry::File)
        } else {
            Err(Error::container(
                "neither a regular file nor a folder (a FIFO, socket or device); remove it from the model folder",
            )
            .in_file(p))
        }
    }
}

enum Entry {
    File,
    Dir,
}

/// Copy every file of `input` except `weights` into `out`, refusing links
/// that lead out of the folder (SPEC §8.5). A file that is one of the
/// weights under another name (a link or a hard link to it) is refused: it
/// would ship a weight file's plaintext beside its sealed copy. When
/// `sealing`, a `.safetensors` file in a subfolder is refused too: only the
/// weight files directly in the folder are sealed, and it would be copied in
/// clear.
fn copy_others(input: &Path, out: &Path, weights: &[PathBuf], sealing: bool) -> Result<()> {
    copy_others_as(input, out, weights, weights, sealing, false)
}

/// [`copy_others`], leaving out `skip` (the weights, and what else the
/// caller writes itself); `dry`: every check, nothing copied.
fn copy_others_as(
    input: &Path,
    out: &Path,
    skip: &[PathBuf],
    weights: &[PathBuf],
    sealing: bool,
    dry: bool,
) -> Result<()> {
    let ids = weights
        .iter()
        .filter_map(|w| fs::metadata(w).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let c = Copier {
        roots: LinkRoots::of(input)?,
        weights: ids,
        sealing,
        dry,
    };
    c.copy_entries(input, out, skip, false)
}

struct Copier {
    roots: LinkRoots,
    weights: HashSet<(u64, u64)>,
    sealing: bool,
    /// Check only: nothing is copied (a folder URL checked before upload).
    dry: bool,
}

impl Copier {
    fn copy_entries(&self, from: &Path, to: &Path, skip: &[PathBuf], sub: bool) -> Result<()> {
        let mut entries = Vec::new();
        for e in fs::read_dir(from).map_err(io("listing", from))? {
            entries.push(e.map_err(io("listing", from))?.path());
        }
        entries.sort();
        for p in entries {
            if skip.contains(&p) {
                continue;
            }
            let Some(name) = p.file_name() else { continue };
            let dest = to.join(name);
            match self.roots.classify(&p)? {
                Entry::File => {
                    let id = fs::metadata(&p).map(|m| (m.dev(), m.ino()));
                    if id.is_ok_and(|id| self.weights.contains(&id)) {
                        return Err(Error::container(
                            "this is one of the model's weight files under another name (a link to it); it would be copied in clear beside its sealed copy: remove it",
                        )
                        .in_file(&p));
                    }
                    if self.sealing && sub && p.extension().is_some_and(|x| x == "safetensors") {
                        return Err(Error::container(
                            "a .safetensors file in a subfolder would be copied in clear (only the weight files directly in the model folder are sealed): seal that subfolder on its own, or move or remove it",
                        )
                        .in_file(&p));
                    }
                    if source::is_remote(to) {
                        #[cfg(feature = "remote")]
                        if self.dry {
                            crate::remote::check_url(&dest.to_string_lossy())?;
                        } else {
                            crate::remote::upload_file(&p, &dest.to_string_lossy(), true)?;
                        }
                    } else if !self.dry {
                        fs::copy(&p, &dest).map_err(out("copying", &p))?;
                    }
                }
                Entry::Dir => {
                    // A folder URL is a prefix: nothing to create.
                    if !source::is_remote(to) && !self.dry {
                        fs::create_dir(&dest).map_err(out("creating", &dest))?;
                    }
                    self.copy_entries(&p, &dest, &[], true)?;
                }
            }
        }
        Ok(())
    }
}

/// A folder being written: built beside its destination, renamed into place.
struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    mode: fs::Permissions,
}

impl AtomicDir {
    fn create(dest: &Path, overwrite: bool) -> Result<AtomicDir> {
        if dest.exists() {
            let empty = fs::read_dir(dest)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !overwrite && !empty {
                return Err(Error::OutputExists(dest.to_path_buf()));
            }
        }
        let name = file_name(dest);
        let parent = source::folder_of(dest);
        let parent = parent.as_path();
        let tmp = atomic::temp_name(parent, &name)?;
        // Private (0700) from its creation, as temporary files are (it may
        // hold plaintext); the umask default on commit.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(out("creating the output folder", &tmp))?;
        let mode = fs::Permissions::from_mode(0o777 & !atomic::umask());
        if let Ok(m) = fs::metadata(&tmp) {
            atomic::remove_stale(parent, &name, m.uid(), &tmp);
        }
        Ok(AtomicDir {
            tmp,
            dest: dest.to_path_buf(),
            mode,
        })
    }
    fn commit(mut self) -> Result<()> {
        fs::set_permissions(&self.tmp, self.mode.clone())
            .map_err(out("setting the output folder's mode", &self.tmp))?;
        if self.dest.exists() {
            fs::remove_dir_all(&self.dest)
                .map_err(out("replacing the output folder", &self.dest))?;
        }
        fs::rename(&self.tmp, &self.dest).map_err(out("renaming the output folder", &self.dest))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The weight files of a folder about to be sealed, their headers, and the
/// shard number each will carry (SPEC §3.1, §8.5).
struct Plan {
    weights: Vec<PathBuf>,
    headers: Vec<(fs::File, crate::format::Header)>,
    shards: Vec<Option<Shard>>,
}

impl Plan {
    fn of(sealer: &Sealer, input: &Path) -> Result<Plan> {
        let weights = weight_files(input)?;
        let mut headers = Vec::new();
        let mut names_by_file = BTreeMap::new();
        for w in &weights {
            let (file, h) = read_header(w)?;
            names_by_file.insert(
                file_name(w),
                h.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            );
            headers.push((file, h));
        }
        check_index(input, &names_by_file, false)?;
        sealer
            .check_selection(names_by_file.values().flatten().map(String::as_str))
            .map_err(|e| e.in_file(input))?;
        let shards = shard_numbers(weights.len(), input)?;
        Ok(Plan {
            weights,
            headers,
            shards,
        })
    }

    fn seal_into(&self, sealer: &Sealer, out_dir: Option<&Path>) -> Result<()> {
        for ((w, (file, h)), shard) in self.weights.iter().zip(&self.headers).zip(&self.shards) {
            let Some(name) = w.file_name() else { continue };
            let dest = out_dir.map_or_else(|| w.clone(), |d| d.join(name));
            sealer.seal_from(file, h, w, &dest, *shard)?;
        }
        Ok(())
    }
}

/// The shard number each of `count` weight files of the folder `input`
/// carries when sealed (SPEC §8.5): one file is a model of one file; several
/// are numbered shards of one sealing, so that none can be dropped or
/// swapped unnoticed.
fn shard_numbers(count: usize, input: &Path) -> Result<Vec<Option<Shard>>> {
    let n = count as u64;
    if n < 2 {
        return Ok(vec![None; count]);
    }
    if n > MAX_SHARDS {
        return Err(Error::Config(format!(
            "the folder holds {n} weight files; a sealed model has at most {MAX_SHARDS} shards"
        ))
        .in_file(input));
    }
    let set = Shard::new_set()?;
    Ok((1..=n)
        .map(|index| {
            Some(Shard {
                set,
                index,
                count: n,
            })
        })
        .collect())
}

/// Seal every weight file of a model folder with one model key, numbered as
/// the shards of one sealing; copy the rest (links leading out of the folder
/// are refused, never followed). The output may be a folder URL
/// ([`write_model_folder`]).
pub fn seal_model_dir(sealer: &Sealer, input: &Path, output: &Path, overwrite: bool) -> Result<()> {
    let plan = Plan::of(sealer, input)?;
    write_model_folder(input, output, &plan.weights, overwrite, true, |dir| {
        plan.seal_into(sealer, Some(dir))
    })
}

/// Write a model folder made from the local folder `input`: `write_weights`
/// writes the weight files into the folder it is given, and the other files
/// of `input` are copied beside them (`sealing`: a `.safetensors` file in a
/// subfolder, which would be copied in clear, is refused).
///
/// A local `output` is built beside its destination and renamed into place.
/// A folder URL (`s3://bucket/model`, feature `remote`) is written object by
/// object: the weight files first, each uploaded as it is sealed (SPEC
/// §8.7), then the other files, the index last of all, so that a reader
/// never finds an index naming shards that are not there yet. Each object
/// appears whole or not at all; the folder as a whole is not atomic (a
/// failure leaves the shards written so far, which no loader takes for a
/// model without the rest).
fn write_model_folder(
    input: &Path,
    output: &Path,
    weights: &[PathBuf],
    overwrite: bool,
    sealing: bool,
    write_weights: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if source::is_remote(output) {
        #[cfg(feature = "remote")]
        {
            let names: Vec<String> = weights.iter().map(|w| file_name(w)).collect();
            crate::remote::check_folder_output(&output.to_string_lossy(), &names, overwrite)?;
            // Every other file is checked (links, names a URL can hold)
            // before anything is uploaded, as a local folder is.
            let index = input.join(INDEX_FILE);
            let mut skip = weights.to_vec();
            skip.push(index.clone());
            copy_others_as(input, output, &skip, weights, sealing, true)?;
            write_weights(output)?;
            copy_others_as(input, output, &skip, weights, sealing, false)?;
            // The index last: a reader that finds it finds every shard.
            if index.is_file() {
                crate::remote::upload_file(
                    &index,
                    &source::join(output, INDEX_FILE).to_string_lossy(),
                    true,
                )?;
            }
            return Ok(());
        }
        #[cfg(not(feature = "remote"))]
        return Err(source::unsupported(output));
    }
    let dir = AtomicDir::create(output, overwrite)?;
    copy_others(input, &dir.tmp, weights, sealing)?;
    write_weights(&dir.tmp)?;
    dir.commit()
}

/// Seal (in practice: sign) every weight file of a folder where it lies, each
/// file replaced atomically. The sealer must allow overwriting.
pub fn seal_model_in_place(sealer: &Sealer, dir: &Path) -> Result<()> {
    let plan = Plan::of(sealer, dir)?;
    plan.seal_into(sealer, None)
}

/// Unseal every weight file of a model folder; copy the rest.
pub fn unseal_model_dir(
    input: &Path,
    output: &Path,
    opts: &OpenOptions<'_>,
    overwrite: bool,
) -> Result<()> {
    let model = SealedModel::open(input, opts)?;
    let dir = AtomicDir::create(output, overwrite)?;
    let weights: Vec<PathBuf> = model.files.iter().map(|f| f.path().to_path_buf()).collect();
    if source::is_remote(input) {
        // A folder URL: its index comes along (the other files of a model
        // repository are fetched the way the framework fetches them).
        let index = source::join(input, INDEX_FILE);
        if let Some(text) = source::read_small(&index, MAX_INDEX_BYTES)? {
            let dest = dir.tmp.join(INDEX_FILE);
            fs::write(&dest, text).map_err(out("writing", &dest))?;
        }
    } else {
        copy_others(input, &dir.tmp, &weights, false)?;
    }
    for f in &model.files {
        let Some(name) = f.path().file_name() else {
            continue;
        };
        f.unseal_to(&dir.tmp.join(name), false)?;
    }
    dir.commit()
}

/// Rekey every shard of a sealed model folder (SPEC §8.4): into `output`
/// (a new folder, the other files copied), or in place when `None`. The
/// folder is first opened as one model, so a folder with a missing or
/// foreign shard is refused before anything is written.
pub fn rekey_model_dir(input: &Path, output: Option<&Path>, opts: &RekeyOptions<'_>) -> Result<()> {
    let model = SealedModel::open(input, &opts.open)?;
    match output {
        Some(out) => {
            let dir = AtomicDir::create(out, opts.overwrite)?;
            let weights: Vec<PathBuf> =
                model.files.iter().map(|f| f.path().to_path_buf()).collect();
            copy_others(input, &dir.tmp, &weights, false)?;
            for f in &model.files {
                let Some(name) = f.path().file_name() else {
                    continue;
                };
                rekey_opened(f, Some(&dir.tmp.join(name)), opts)?;
            }
            dir.commit()
        }
        None => {
            for f in &model.files {
                rekey_opened(f, None, opts)?;
            }
            Ok(())
        }
    }
}

// ---- a model given as a path: one file, or a folder ------------------------------------------

/// The weight files of a model given as a path: the file itself, or the
/// `.safetensors` files directly in a folder ([`weight_files`]).
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    if source::is_folder(path) {
        weight_files(path)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// The tensor bytes of a file, or of all the weight files of a folder
/// (what a whole-model operation will read: a progress bar's total).
pub fn data_len(path: &Path) -> Result<u64> {
    let mut total = 0u64;
    for f in files_of(path)? {
        let (_, h) = crate::format::read_header_source(&f)?;
        total = total.saturating_add(h.data_len() as u64);
    }
    Ok(total)
}

/// Open a model for reading every byte of it (verify): a folder as one
/// model ([`SealedModel::open`]: one key release, the complete shard set of
/// one sealing, the index checked), a single file with the check every
/// loader makes of a file that lies in a sharded or indexed folder
/// ([`check_member`]). The CLI's and Python's `verify` both open through
/// this, so they give the same verdicts on the same folders.
pub fn open_path(path: &Path, opts: &OpenOptions<'_>) -> Result<Vec<SealedFile>> {
    if source::is_folder(path) {
        return Ok(SealedModel::open(path, opts)?.into_files());
    }
    let f = SealedFile::open(path, opts)?;
    check_member(&f, opts)?;
    Ok(vec![f])
}

/// Seal a file, or a model folder ([`seal_model_dir`]), into `output`.
/// The output may be a URL (feature `remote`): a file, or a folder for a
/// model folder, written in a bucket with multipart uploads.
pub fn seal_path(sealer: &Sealer, input: &Path, output: &Path, overwrite: bool) -> Result<()> {
    source::local_input(input)?;
    if input.is_dir() {
        seal_model_dir(sealer, input, output, overwrite)
    } else {
        sealer.seal_file(input, output)
    }
}

/// Seal (in practice: sign) a file or a model folder where it lies, each
/// file replaced atomically ([`seal_model_in_place`]). The sealer must allow
/// overwriting.
pub fn seal_path_in_place(sealer: &Sealer, path: &Path) -> Result<()> {
    if path.is_dir() {
        seal_model_in_place(sealer, path)
    } else {
        sealer.seal_file(path, path)
    }
}

/// Unseal a file, or a model folder ([`unseal_model_dir`]), into `output`.
pub fn unseal_path(
    input: &Path,
    output: &Path,
    opts: &OpenOptions<'_>,
    overwrite: bool,
) -> Result<()> {
    source::local_output(output)?;
    if source::is_folder(input) {
        unseal_model_dir(input, output, opts, overwrite)
    } else {
        SealedFile::open(input, opts)?.unseal_to(output, overwrite)
    }
}

/// Convert a CryptoTensors file, or a folder of them, into a sealtensors
/// file or model (SPEC A.5): each file is opened with `opts` (signature
/// against the trusted signers, local policy, data keys), its plaintext
/// streamed through the loading engine and sealed again by `sealer`; a
/// folder becomes the numbered shards of one sealing, its other files
/// copied. Written atomically (into a local path, or a URL as `seal` writes
/// one: [`write_model_folder`]); nothing plaintext touches the disk.
pub fn convert_path(
    sealer: &Sealer,
    input: &Path,
    output: &Path,
    opts: &OpenOptions<'_>,
    overwrite: bool,
) -> Result<()> {
    source::local_input(input)?;
    let not_ct = |f: &SealedFile| {
        Error::Config(
            "not a CryptoTensors file: seal a plain file with `seal`, or change a sealed one's keys with `rekey`".into(),
        )
        .in_file(f.path())
    };
    if !input.is_dir() {
        let f = SealedFile::open(input, opts)?;
        if f.cryptotensors().is_none() {
            return Err(not_ct(&f));
        }
        return sealer.seal_opened(&f, output, None);
    }
    let model = SealedModel::open(input, opts)?;
    if let Some(f) = model.files.iter().find(|f| f.cryptotensors().is_none()) {
        return Err(not_ct(f));
    }
    for f in &model.files {
        sealer.check_convertible(f)?;
    }
    let shards = shard_numbers(model.files.len(), input)?;
    let weights: Vec<PathBuf> = model.files.iter().map(|f| f.path().to_path_buf()).collect();
    write_model_folder(input, output, &weights, overwrite, false, |dir| {
        for (f, shard) in model.files.iter().zip(shards) {
            let Some(name) = f.path().file_name() else {
                continue;
            };
            sealer.seal_opened(f, &dir.join(name), shard)?;
        }
        Ok(())
    })
}

/// Rekey a file, or every shard of a model folder ([`rekey_model_dir`]):
/// into `output`, or in place when `None`.
pub fn rekey_path(input: &Path, output: Option<&Path>, opts: &RekeyOptions<'_>) -> Result<()> {
    // A rekey rewrites files: local ones only.
    source::local_output(input)?;
    source::local_output(output.unwrap_or(input))?;
    if input.is_dir() {
        rekey_model_dir(input, output, opts)
    } else {
        rekey_file(input, output, opts)
    }
}

/// The access policy a sealed file or model folder carries, with what a
/// local policy input document needs (SPEC §3.6). A folder's is its first
/// weight file's: the shards of one sealing carry the same.
#[derive(Debug, Clone)]
pub struct EmbeddedPolicy {
    /// The weight file read.
    pub file: PathBuf,
    /// Whether that file is sealed (a plain file carries no policy).
    pub sealed: bool,
    /// The policy's Rego text, when the file carries one.
    pub text: Option<String>,
    /// The file's model id, version and times (default for a plain file).
    pub model: ModelInfo,
    /// The file's tensor names, in file order.
    pub tensors: Vec<String>,
}

impl EmbeddedPolicy {
    /// The policy of a model folder, or of a safetensors file; `None` when
    /// `path` is neither (a `.rego` file, say). No key is needed.
    pub fn of_path(path: &Path) -> Result<Option<EmbeddedPolicy>> {
        let file = if path.is_dir() {
            match weight_files(path)?.into_iter().next() {
                Some(f) => f,
                None => return Ok(None),
            }
        } else if read_header(path).is_ok() {
            path.to_path_buf()
        } else {
            return Ok(None);
        };
        let (_, h) = read_header(&file)?;
        let tensors = h.tensors.iter().map(|t| t.name.clone()).collect();
        if crate::cryptotensors::is_cryptotensors(&h) && !crate::seal::is_sealed(&h) {
            return Err(Error::Config(
                "this is a CryptoTensors file: its local policy (data.model.allow, SPEC appendix A) is evaluated on every open; test it with `sealtensors verify --licence ...` and its keys, or see it with `sealtensors inspect`".into(),
            )
            .in_file(&file));
        }
        if !crate::seal::is_sealed(&h) {
            return Ok(Some(EmbeddedPolicy {
                file,
                sealed: false,
                text: None,
                model: ModelInfo::default(),
                tensors,
            }));
        }
        let m = crate::seal::parse(&h).map_err(|e| e.in_file(&file))?;
        Ok(Some(EmbeddedPolicy {
            file,
            sealed: true,
            text: m.policy,
            model: m.doc.model,
            tensors,
        }))
    }

    /// The weight file's name, as the policy input document gives it.
    pub fn file_name(&self) -> Option<String> {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }
}

/// Check a sealed file opened on its own against the folder it lies in
/// (SPEC §8.5): a shard of a sharded model, or a file named by the
/// folder's index, is used only when the whole folder is one complete
/// sealed model that holds it. Loaders that open shards one at a time
/// (Python's `safe_open` under transformers and vLLM) call this after
/// opening each one. No key is unwrapped or released for the check: the
/// other shards' MACs are checked with `file.model_key()`.
pub fn check_member(file: &SealedFile, opts: &OpenOptions<'_>) -> Result<()> {
    member_files(file, opts).map(|_| ())
}

/// [`check_member`], returning the model's files (canonical path and
/// authenticated file id) when the file is part of a folder model.
fn member_files(file: &SealedFile, opts: &OpenOptions<'_>) -> Result<Vec<(PathBuf, [u8; 32])>> {
    let Some(meta) = file.seal() else {
        return Ok(Vec::new()); // plain files open as plain safetensors files do
    };
    let path = file.path();
    let dir = source::folder_of(path);
    let dir = dir.as_path();
    // A file with no shard number and no index beside it is a model of one
    // file (a folder may hold several such files, of different sealings).
    if meta.shard.is_none() && !source::exists(&source::join(dir, INDEX_FILE))? {
        return Ok(Vec::new());
    }
    // The other shards are opened locked: their signatures, expiry and the
    // shard set are checked, but no key is unwrapped or released and their
    // policies decide nothing (this load reads none of their tensors); their
    // MACs are checked with the model key this file already holds.
    let mut opts = opts.clone();
    opts.locked = true;
    opts.model_key = None;
    opts.broker = None;
    opts.progress = None;
    let model = SealedModel::open(dir, &opts)?;
    if let Some(mk) = file.model_key() {
        for f in &model.files {
            f.check_mac_with(mk)?;
        }
    }
    let me = source::canonical(path)?;
    let members: Vec<(PathBuf, [u8; 32])> = model
        .files
        .iter()
        .filter_map(|f| {
            let id = f.seal()?.file_id;
            Some((source::canonical(f.path()).ok()?, id))
        })
        .collect();
    if !members.iter().any(|(p, _)| *p == me) {
        return Err(Error::IncompleteModel(format!(
            "{} is not one of the model's weight files",
            path.display()
        ))
        .in_file(dir));
    }
    Ok(members)
}

/// One load of models (SPEC §8.5, "one open per model"): while it lives,
/// the shards of a folder that a loader opens one at a time (transformers
/// and vLLM open each several times) share one model key, unwrapped or
/// released by the first open, and the folder check of §8.5 runs once.
///
/// Every open still checks its file's signature, expiry, policy and MAC
/// (with the shared key), and a file skips the folder check only if the
/// check already found this very file in the folder: same path and same
/// authenticated `file_id`. Keys are shared only between opens with the same
/// credentials (`credentials`: a digest of whatever the caller's keys are,
/// so that an opener never gets a key its own keys would not open). Drop the
/// scope when the load ends: the keys go with it (zeroized).
#[derive(Default)]
pub struct LoadScope {
    entries: std::sync::Mutex<HashMap<(PathBuf, [u8; 32]), ScopeEntry>>,
}

#[derive(Default, Clone)]
struct ScopeEntry {
    key: Option<crate::keys::ModelKey>,
    members: Vec<(PathBuf, [u8; 32])>,
}

impl LoadScope {
    /// An empty scope.
    pub fn new() -> LoadScope {
        LoadScope::default()
    }

    /// Open `path` as [`SealedFile::open`] and [`check_member`] would, sharing
    /// the model key and the folder check with earlier opens of the same
    /// folder in this scope under the same `credentials`.
    pub fn open_member(
        &self,
        path: &Path,
        opts: &OpenOptions<'_>,
        credentials: [u8; 32],
    ) -> Result<SealedFile> {
        let dir = source::folder_of(path);
        let slot = (source::canonical(&dir)?, credentials);
        let known = self.lock().get(&slot).cloned().unwrap_or_default();
        let mut o = opts.clone();
        if o.model_key.is_none() {
            o.model_key = known.key.clone();
        }
        let file = SealedFile::open(path, &o)?;
        let me = source::canonical(path)?;
        let id = file.seal().map(|m| m.file_id);
        let checked = id.is_some_and(|id| known.members.iter().any(|m| *m == (me.clone(), id)));
        let members = if checked {
            known.members
        } else {
            member_files(&file, opts)?
        };
        let key = file.model_key().cloned().or(known.key);
        if file.seal().is_some() {
            self.lock().insert(slot, ScopeEntry { key, members });
        }
        Ok(file)
    }

    /// Check that `loaded`, the files a caller read one at a time from the
    /// folder `dir` (after listing it itself), are every weight file of the
    /// model this scope's folder check found there. The caller's listing and
    /// the check's are two reads: a folder that changed between them (or a
    /// store that serves two versions of its listing or index) must not
    /// yield a partial model. Nothing to check when no sealed shard of `dir`
    /// was opened in this scope.
    pub fn check_loaded(&self, dir: &Path, loaded: &[PathBuf]) -> Result<()> {
        let dir = source::canonical(dir)?;
        let members: Vec<PathBuf> = self
            .lock()
            .iter()
            .filter(|((d, _), _)| *d == dir)
            .flat_map(|(_, e)| e.members.iter().map(|(p, _)| p.clone()))
            .collect();
        let got = loaded
            .iter()
            .map(|p| source::canonical(p))
            .collect::<Result<HashSet<PathBuf>>>()?;
        if let Some(missing) = members.iter().find(|m| !got.contains(*m)) {
            return Err(Error::IncompleteModel(format!(
                "{} is one of the model's weight files, but the listing this load read did not name it: the folder changed during the load (or its store serves two versions of it); load again",
                missing.display()
            ))
            .in_file(&dir));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, [u8; 32]), ScopeEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every weight file of a model folder, opened with one key release.
pub struct SealedModel {
    files: Vec<SealedFile>,
    by_tensor: HashMap<String, usize>,
}

impl SealedModel {
    /// Open all shards: the first one unwraps the model key, the others reuse
    /// it (each shard's signature, expiry and MAC are still checked).
    pub fn open(dir: &Path, opts: &OpenOptions<'_>) -> Result<SealedModel> {
        let (weights, index) = weight_files_and_index(dir)?;
        let mut files: Vec<SealedFile> = Vec::with_capacity(weights.len());
        let mut opts = opts.clone();
        for w in &weights {
            let f = SealedFile::open(w, &opts)?;
            if opts.model_key.is_none() {
                opts.model_key = f.model_key().cloned();
            }
            files.push(f);
        }
        check_shard_set(dir, &files)?;
        let mut by_tensor = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in f.tensors() {
                if by_tensor.insert(t.name.clone(), i).is_some() {
                    return Err(
                        Error::container(format!("tensor {:?} is in two shards", t.name))
                            .in_file(dir),
                    );
                }
            }
        }
        let names_by_file = files
            .iter()
            .map(|f| {
                let names = f.tensors().iter().map(|t| t.name.clone()).collect();
                (file_name(f.path()), names)
            })
            .collect();
        let sealed = files.first().is_some_and(|f| f.seal().is_some());
        check_index_read(dir, index, &names_by_file, sealed)?;
        Ok(SealedModel { files, by_tensor })
    }

    /// The opened shards.
    pub fn files(&self) -> &[SealedFile] {
        &self.files
    }

    /// The opened shards, owned.
    pub fn into_files(self) -> Vec<SealedFile> {
        self.files
    }

    /// The shard holding a tensor.
    pub fn file_of(&self, name: &str) -> Result<&SealedFile> {
        self.by_tensor
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::NoSuchTensor(name.to_string()))
    }

    /// Every tensor name, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_tensor.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Read a whole tensor.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>> {
        self.file_of(name)?.read_tensor(name)
    }
}
