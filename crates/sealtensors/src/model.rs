//! Hugging Face model folders (SPEC §8.5): `model.safetensors`, or shards
//! `model-0000X-of-0000N.safetensors` with `model.safetensors.index.json`.
//! One model key serves every shard, so one key release opens the whole
//! model. Tensor names, dtypes, shapes and sizes do not change when sealing,
//! so the index file stays valid and is copied as it is; every other file
//! (config, tokenizer) is copied unchanged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::crypto;
use crate::error::{Error, Result};
use crate::read::{read_header, OpenOptions, SealedFile};
use crate::write::Sealer;

/// The index file name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

fn out<'a>(what: &str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::output(what, e).in_file(p)
}

fn io<'a>(what: &str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(what, e).in_file(p)
}

/// The `.safetensors` files directly in `dir`, sorted. Errors when there is none.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
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
    Ok(out)
}

/// Check the index (when present) against the shards' headers.
fn check_index(dir: &Path, names_by_file: &BTreeMap<String, Vec<String>>) -> Result<()> {
    let p = dir.join(INDEX_FILE);
    if !p.exists() {
        return Ok(());
    }
    let text = fs::read_to_string(&p).map_err(io("reading the index", &p))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::container(format!("index is not JSON: {e}")).in_file(&p))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::container("index has no weight_map").in_file(&p))?;
    for (name, file) in map {
        let file = file.as_str().unwrap_or("");
        let ok = names_by_file
            .get(file)
            .is_some_and(|n| n.iter().any(|x| x == name));
        if !ok {
            return Err(Error::container(format!(
                "index maps tensor {name:?} to {file:?}, which does not hold it"
            ))
            .in_file(&p));
        }
    }
    Ok(())
}

/// A folder being written: built beside its destination, renamed into place.
struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
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
        let rnd: [u8; 6] = crypto::random_array()?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = parent.join(format!(
            ".{name}.{}.tmp",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        fs::create_dir(&tmp).map_err(out("creating the output folder", &tmp))?;
        Ok(AtomicDir {
            tmp,
            dest: dest.to_path_buf(),
        })
    }
    fn commit(mut self) -> Result<()> {
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

fn copy_others(input: &Path, out: &Path, weights: &[PathBuf]) -> Result<()> {
    for e in fs::read_dir(input).map_err(io("listing", input))? {
        let p = e.map_err(io("listing", input))?.path();
        if weights.contains(&p) {
            continue;
        }
        let Some(name) = p.file_name() else { continue };
        copy_tree(&p, &out.join(name))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to).map_err(out("creating", to))?;
        for e in fs::read_dir(from).map_err(io("listing", from))? {
            let p = e.map_err(io("listing", from))?.path();
            if let Some(n) = p.file_name() {
                copy_tree(&p, &to.join(n))?;
            }
        }
    } else {
        fs::copy(from, to).map_err(out("copying", from))?;
    }
    Ok(())
}

/// Seal every weight file of a model folder with one model key; copy the rest.
pub fn seal_model_dir(sealer: &Sealer, input: &Path, output: &Path, overwrite: bool) -> Result<()> {
    let weights = weight_files(input)?;
    let mut headers = Vec::new();
    let mut names_by_file = BTreeMap::new();
    for w in &weights {
        let (file, h) = read_header(w)?;
        let fname = w
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        names_by_file.insert(
            fname,
            h.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        );
        headers.push((file, h));
    }
    check_index(input, &names_by_file)?;
    sealer
        .check_selection(names_by_file.values().flatten().map(String::as_str))
        .map_err(|e| e.in_file(input))?;
    let dir = AtomicDir::create(output, overwrite)?;
    for (w, (file, h)) in weights.iter().zip(&headers) {
        let Some(name) = w.file_name() else { continue };
        sealer.seal_from(file, h, w, &dir.tmp.join(name))?;
    }
    copy_others(input, &dir.tmp, &weights)?;
    dir.commit()
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
    for f in &model.files {
        let Some(name) = f.path().file_name() else {
            continue;
        };
        f.unseal_to(&dir.tmp.join(name), false)?;
    }
    let weights: Vec<PathBuf> = model.files.iter().map(|f| f.path().to_path_buf()).collect();
    copy_others(input, &dir.tmp, &weights)?;
    dir.commit()
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
        let weights = weight_files(dir)?;
        let mut files: Vec<SealedFile> = Vec::with_capacity(weights.len());
        let mut opts = opts.clone();
        for w in &weights {
            let f = SealedFile::open(w, &opts)?;
            if opts.model_key.is_none() {
                opts.model_key = f.model_key().cloned();
            }
            files.push(f);
        }
        // Shards of one model: one model key, one model id and version, all
        // sealed or all plain. Mixing shards of different seals is refused.
        let ident = |f: &SealedFile| {
            f.seal()
                .map(|m| (m.mk_id, m.doc.model.id.clone(), m.doc.model.version.clone()))
        };
        if let Some(first) = files.first() {
            let want = ident(first);
            for f in &files[1..] {
                if ident(f) != want {
                    return Err(Error::container(format!(
                        "{} and {} are not shards of one sealed model (model key, id or version differ, or one is plain)",
                        first.path().display(),
                        f.path().display()
                    ))
                    .in_file(dir));
                }
            }
        }
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
                let n = f
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (n, f.tensors().iter().map(|t| t.name.clone()).collect())
            })
            .collect();
        check_index(dir, &names_by_file)?;
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
