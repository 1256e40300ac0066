//! Attacks on model folders (SPEC §8.5, docs/threat-model.md): shards deleted,
//! duplicated or taken from another sealing, an index pointing out of the
//! folder, symbolic links followed while copying, signatures laundered by
//! rekey, quadratic lookups, huge declared tensors, and plaintext left in
//! temporaries. Each test reproduces the attack and checks the refusal.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use sealtensors::keys::{SigningKey, X25519Identity};
use sealtensors::model::{
    check_member, rekey_model_dir, seal_model_dir, seal_model_in_place, unseal_model_dir,
    SealedModel, INDEX_FILE,
};
use sealtensors::rekey::{rekey_file, RekeyOptions};
use sealtensors::{
    Dtype, Error, ErrorClass, OpenOptions, SealOptions, SealedFile, Sealer, TensorRef,
};

const SHARD: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

struct Folder {
    tmp: tempfile::TempDir,
    src: PathBuf,
    id: X25519Identity,
    signer: SigningKey,
}

impl Folder {
    fn new() -> Folder {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("model");
        write_sharded(&src);
        Folder {
            tmp,
            src,
            id: X25519Identity::generate().unwrap(),
            signer: SigningKey::generate().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Seal the plain folder into `name`: encrypted for the identity, or
    /// sign-only; signed by the folder's signer either way.
    fn seal(&self, name: &str, encrypted: bool) -> PathBuf {
        let sealer = Sealer::new(SealOptions {
            recipients: if encrypted {
                vec![Box::new(self.id.recipient())]
            } else {
                Vec::new()
            },
            signing_key: Some(self.signer.try_clone().unwrap()),
            chunk_size: 4096,
            model_id: "acme/test".into(),
            model_version: "1".into(),
            ..Default::default()
        })
        .unwrap();
        let out = self.path(name);
        seal_model_dir(&sealer, &self.src, &out, false).unwrap();
        out
    }

    /// A loader that trusts the folder's signer (the strongest setting).
    fn opts(&self) -> OpenOptions<'_> {
        OpenOptions {
            identities: vec![&self.id],
            trusted: vec![self.signer.verifying_key()],
            ..Default::default()
        }
    }
}

/// Drop `file`'s tensors from the index, as an attacker hiding a deleted shard would.
fn drop_from_index(dir: &Path, file: &str) {
    let p = dir.join(INDEX_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["weight_map"]
        .as_object_mut()
        .unwrap()
        .retain(|_, f| f != file);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn point_index(dir: &Path, from: &str, to: &str) {
    let p = dir.join(INDEX_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    for (_, f) in v["weight_map"].as_object_mut().unwrap().iter_mut() {
        if f == from {
            *f = serde_json::Value::String(to.into());
        }
    }
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn assert_incomplete(r: sealtensors::Result<impl Sized>, want: &str) {
    let err = r.err().expect("the folder must be refused");
    assert!(
        matches!(err.kind(), Error::IncompleteModel(_)),
        "wrong error: {err}"
    );
    assert_eq!(err.class(), ErrorClass::NotAuthentic);
    assert!(err.to_string().contains(want), "{err}");
}

/// Every face that reads a folder: as one model, shard by shard (Python's
/// `safe_open` under transformers and vLLM calls `check_member`), unseal.
fn every_reader_refuses(f: &Folder, dir: &Path, want: &str) {
    let opts = f.opts();
    assert_incomplete(SealedModel::open(dir, &opts), want);
    let first = SealedFile::open(dir.join(SHARD[0]), &opts).unwrap();
    assert_incomplete(check_member(&first, &opts), want);
    assert_incomplete(unseal_model_dir(dir, &f.path("out"), &opts, false), want);
    assert!(!f.path("out").exists(), "nothing is written");
}

#[test]
fn each_shard_carries_its_number_in_the_signed_header() {
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    let opts = f.opts();
    let m = SealedModel::open(&sealed, &opts).unwrap();
    let shards: Vec<_> = m
        .files()
        .iter()
        .map(|s| s.seal().unwrap().shard.unwrap())
        .collect();
    assert_eq!(
        shards
            .iter()
            .map(|s| (s.index, s.count))
            .collect::<Vec<_>>(),
        vec![(1, 3), (2, 3), (3, 3)]
    );
    assert!(shards.iter().all(|s| s.set == shards[0].set));
    for s in m.files() {
        check_member(s, &opts).unwrap();
    }
    // A single file is a model of one file: no shard number.
    let fx = Fixture::new();
    let one = fx.seal("one.safetensors", |_| {});
    let one = fx.open(&one).unwrap();
    assert!(one.seal().unwrap().shard.is_none());
}

#[test]
fn a_deleted_shard_is_refused_by_every_reader() {
    let f = Folder::new();
    for encrypted in [true, false] {
        let sealed = f.seal(if encrypted { "enc" } else { "signed" }, encrypted);
        std::fs::remove_file(sealed.join(SHARD[2])).unwrap();
        drop_from_index(&sealed, SHARD[2]);
        every_reader_refuses(&f, &sealed, "missing: shard 3");
    }
}

#[test]
fn a_shard_of_another_sealing_is_refused_even_sign_only() {
    let f = Folder::new();
    // Sign-only shards share no model key: only the shard set tells sealings apart.
    let a = f.seal("a", false);
    let b = f.seal("b", false);
    std::fs::copy(b.join(SHARD[1]), a.join(SHARD[1])).unwrap();
    every_reader_refuses(&f, &a, "another sealing");
}

#[test]
fn a_duplicated_shard_is_refused() {
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    // shard 3 replaced by a second copy of shard 2 under shard 3's name
    std::fs::copy(sealed.join(SHARD[1]), sealed.join(SHARD[2])).unwrap();
    every_reader_refuses(&f, &sealed, "both shard 2 of 3");
}

#[test]
fn a_lone_shard_is_refused() {
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    let lone = f.path("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(sealed.join(SHARD[0]), lone.join("model.safetensors")).unwrap();
    let opts = f.opts();
    assert_incomplete(SealedModel::open(&lone, &opts), "shard 1 of 3");
    let one = SealedFile::open(lone.join("model.safetensors"), &opts).unwrap();
    assert_incomplete(check_member(&one, &opts), "shard 1 of 3");
}

#[test]
fn an_index_pointing_out_of_the_folder_is_refused() {
    let f = Folder::new();
    let victim = f.seal("victim", true);
    let other = f.seal("other", true);
    for target in [
        format!("../other/{}", SHARD[2]),
        format!("{}/{}", other.display(), SHARD[2]),
        "..".to_string(),
        String::new(),
    ] {
        std::fs::copy(f.src.join(INDEX_FILE), victim.join(INDEX_FILE)).unwrap();
        point_index(&victim, SHARD[2], &target);
        let opts = f.opts();
        for r in [
            SealedModel::open(&victim, &opts).map(|_| ()),
            check_member(
                &SealedFile::open(victim.join(SHARD[0]), &opts).unwrap(),
                &opts,
            ),
        ] {
            let err = r.expect_err("an index entry outside the folder is refused");
            assert!(
                matches!(err.kind(), Error::InvalidContainer(_)),
                "{target}: {err}"
            );
            assert!(err.to_string().contains("not a file name"), "{err}");
        }
    }
    // The same index is refused when sealing a plain folder.
    point_index(&f.src, SHARD[2], &format!("../x/{}", SHARD[2]));
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(f.id.recipient())],
        ..Default::default()
    })
    .unwrap();
    let err = seal_model_dir(&sealer, &f.src, &f.path("s2"), false).unwrap_err();
    assert!(err.to_string().contains("not a file name"), "{err}");
}

#[test]
fn signing_a_folder_in_place_numbers_its_shards() {
    let f = Folder::new();
    let sealer = Sealer::new(SealOptions {
        signing_key: Some(f.signer.try_clone().unwrap()),
        overwrite: true,
        ..Default::default()
    })
    .unwrap();
    seal_model_in_place(&sealer, &f.src).unwrap();
    let opts = f.opts();
    SealedModel::open(&f.src, &opts).unwrap();
    std::fs::remove_file(f.src.join(SHARD[1])).unwrap();
    assert_incomplete(SealedModel::open(&f.src, &opts), "missing: shard 2");
}

// ---- rekey must not launder signatures -----------------------------------------------

fn rekey_opts<'a>(open: OpenOptions<'a>, key: &SigningKey) -> RekeyOptions<'a> {
    RekeyOptions {
        open,
        signing_key: Some(key.try_clone().unwrap()),
        ..Default::default()
    }
}

#[test]
fn rekey_does_not_launder_a_file_signed_by_an_unknown_key() {
    let fx = Fixture::new();
    let publisher = SigningKey::generate().unwrap();
    // The attacker seals planted weights for the deployer and signs them.
    let planted = fx.seal("planted.safetensors", |_| {});
    let lax = || OpenOptions {
        identities: vec![&fx.id],
        ..Default::default()
    };
    let err = rekey_file(&planted, None, &rekey_opts(lax(), &publisher)).unwrap_err();
    assert!(
        matches!(err.kind(), Error::ResignUnverified { .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::NotAuthentic);
    // Untouched, and still not verifiable as the publisher's.
    let strict = OpenOptions {
        identities: vec![&fx.id],
        trusted: vec![publisher.verifying_key()],
        ..Default::default()
    };
    assert!(SealedFile::open(&planted, &strict).is_err());

    // Unsigned sealed files are not vouched for either.
    let unsigned = fx.seal("unsigned.safetensors", |o| o.signing_key = None);
    let err = rekey_file(&unsigned, None, &rekey_opts(lax(), &publisher)).unwrap_err();
    assert!(
        matches!(err.kind(), Error::ResignUnverified { .. }),
        "{err}"
    );

    // Rotating from a signer the operator trusts works ...
    let mut trusting = lax();
    trusting.trusted = vec![fx.signer.verifying_key()];
    rekey_file(&planted, None, &rekey_opts(trusting, &publisher)).unwrap();
    SealedFile::open(&planted, &strict).unwrap();
    // ... and so does re-signing a file the key already signed (adding a
    // recipient keeps the publisher's own signature), without --trust.
    let other = X25519Identity::generate().unwrap();
    let mut o = rekey_opts(lax(), &publisher);
    o.add = vec![Box::new(other.recipient())];
    rekey_file(&planted, None, &o).unwrap();
}

#[test]
fn folder_rekey_checks_the_shard_set_and_keeps_it() {
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    let other = X25519Identity::generate().unwrap();
    let mut o = rekey_opts(f.opts(), &f.signer);
    o.add = vec![Box::new(other.recipient())];
    rekey_model_dir(&sealed, Some(&f.path("rekeyed")), &o).unwrap();
    let by_other = OpenOptions {
        identities: vec![&other],
        trusted: vec![f.signer.verifying_key()],
        ..Default::default()
    };
    SealedModel::open(&f.path("rekeyed"), &by_other).unwrap();
    // A folder with a shard missing is refused before anything is written.
    std::fs::remove_file(sealed.join(SHARD[0])).unwrap();
    assert_incomplete(
        rekey_model_dir(&sealed, Some(&f.path("rekeyed2")), &o),
        "missing: shard 1",
    );
    assert!(!f.path("rekeyed2").exists());
}

// ---- symbolic links -------------------------------------------------------------------

fn sealer_for(f: &Folder) -> Sealer {
    Sealer::new(SealOptions {
        recipients: vec![Box::new(f.id.recipient())],
        signing_key: Some(f.signer.try_clone().unwrap()),
        ..Default::default()
    })
    .unwrap()
}

fn assert_unsafe_link(r: sealtensors::Result<()>, link: &str) {
    let err = r.expect_err("the link must be refused");
    assert!(
        matches!(err.kind(), Error::UnsafeLink { .. }),
        "wrong error: {err}"
    );
    assert!(err.to_string().contains(link), "{err}");
}

#[test]
fn seal_never_ships_a_link_to_a_secret_in_clear() {
    let f = Folder::new();
    let secret = f.path("publisher.jwk");
    std::fs::write(&secret, "SECRET-SIGNING-KEY").unwrap();
    symlink(&secret, f.src.join("generation_config.json")).unwrap();
    let out = f.path("sealed");
    assert_unsafe_link(
        seal_model_dir(&sealer_for(&f), &f.src, &out, false),
        "generation_config.json",
    );
    assert!(!out.exists());
    // A relative link out of the folder, and one inside a subfolder, too.
    std::fs::remove_file(f.src.join("generation_config.json")).unwrap();
    symlink("../../publisher.jwk", f.src.join("sub").join("vocab.txt")).unwrap();
    assert_unsafe_link(
        seal_model_dir(&sealer_for(&f), &f.src, &out, false),
        "vocab.txt",
    );
}

#[test]
fn unseal_never_copies_a_link_to_the_identity() {
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    let identity = f.path("me.jwk");
    std::fs::write(&identity, "DEPLOYER-SECRET").unwrap();
    symlink(&identity, sealed.join("special_tokens_map.json")).unwrap();
    let out = f.path("out");
    assert_unsafe_link(
        unseal_model_dir(&sealed, &out, &f.opts(), false),
        "special_tokens_map.json",
    );
    assert!(!out.exists());
}

#[test]
fn a_link_loop_is_refused_not_followed() {
    let f = Folder::new();
    symlink(".", f.src.join("loop")).unwrap();
    let out = f.path("sealed");
    assert_unsafe_link(seal_model_dir(&sealer_for(&f), &f.src, &out, false), "loop");
    assert!(!out.exists());
}

#[test]
fn links_inside_the_folder_and_into_a_hub_cache_are_copied() {
    // The layout of ~/.cache/huggingface/hub: snapshots/<rev>/* -> ../../blobs/<hash>.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--acme--tiny");
    let snap = repo.join("snapshots").join("abc123");
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    write_sharded(&snap);
    for name in ["config.json", INDEX_FILE, SHARD[0]] {
        let blob = blobs.join(format!("blob-{name}"));
        std::fs::rename(snap.join(name), &blob).unwrap();
        symlink(format!("../../blobs/blob-{name}"), snap.join(name)).unwrap();
    }
    symlink("config.json", snap.join("config-alias.json")).unwrap();
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        ..Default::default()
    })
    .unwrap();
    let out = tmp.path().join("sealed");
    seal_model_dir(&sealer, &snap, &out, false).unwrap();
    for name in ["config.json", "config-alias.json", INDEX_FILE] {
        let m = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(m.is_file(), "{name} is copied as a file");
    }
    let opts = OpenOptions {
        identities: vec![&id],
        ..Default::default()
    };
    SealedModel::open(&out, &opts).unwrap();
}

// ---- 100k tensors: lookups are constant-time --------------------------------------------

#[test]
fn a_file_of_100k_tensors_verifies_and_reads_by_name() {
    let n = 100_000;
    let data: Vec<[u8; 4]> = (0..n as u32).map(|i| i.to_le_bytes()).collect();
    let names: Vec<String> = (0..n).map(|i| format!("t.{i}")).collect();
    let refs: Vec<TensorRef<'_>> = names
        .iter()
        .zip(&data)
        .map(|(name, d)| TensorRef {
            name: name.clone(),
            dtype: Dtype::U8,
            shape: vec![4],
            data: d,
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain.safetensors");
    sealtensors::write_plain(&plain, &refs, None, false).unwrap();
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        encrypt: Some(vec!["t.1*".into()]),
        ..Default::default()
    })
    .unwrap();
    let sealed = tmp.path().join("sealed.safetensors");
    sealer.seal_file(&plain, &sealed).unwrap();
    let f = SealedFile::open(
        &sealed,
        &OpenOptions {
            identities: vec![&id],
            ..Default::default()
        },
    )
    .unwrap();
    // What `verify` and Python's get_tensors do: a lookup per tensor.
    let encrypted = names.iter().filter(|n| f.is_encrypted(n).unwrap()).count();
    assert_eq!(encrypted, 11_111);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let all = f.read_tensors(&refs).unwrap();
    assert!(all.iter().zip(&data).all(|(a, b)| a.as_slice() == b));
    f.verify_data().unwrap();
}

// ---- a huge declared tensor is an error, not an abort -----------------------------------

#[test]
fn a_tensor_larger_than_memory_is_an_error_not_an_abort() {
    // Linux refuses an allocation above RAM + swap unless overcommit is
    // forced on (mode 1), in which case the probe cannot fail: say so.
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    if mode.trim() == "1" {
        eprintln!("SKIPPED: vm.overcommit_memory=1 lets any allocation succeed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("huge.safetensors");
    let len: u64 = 1 << 40; // 1 TiB, in a sparse file
    let json =
        format!("{{\"huge\":{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[0,{len}]}}}}");
    let mut head = json.into_bytes();
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&head);
    std::fs::write(&p, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    if file.set_len(bytes.len() as u64 + len).is_err() {
        eprintln!("SKIPPED: this filesystem cannot hold a sparse 1 TiB file");
        return;
    }
    let f = SealedFile::open(&p, &OpenOptions::default()).unwrap();
    for r in [
        f.read_tensor("huge").map(|_| ()),
        f.read_tensors(&["huge"]).map(|_| ()),
        f.read_range("huge", 0, len as usize).map(|_| ()),
    ] {
        let err = r.unwrap_err();
        assert!(
            matches!(err.kind(), Error::OutOfMemory { .. }),
            "wrong error: {err}"
        );
    }
    // A range past the tensor is refused before anything is allocated.
    let err = f.read_range("huge", 0, usize::MAX).unwrap_err();
    assert!(
        matches!(err.kind(), Error::RangeOutOfBounds { .. }),
        "{err}"
    );
}

// ---- temporaries: private while written, cleaned after a crash ---------------------------

#[test]
fn temporaries_are_private_and_stale_ones_are_removed() {
    let fx = Fixture::new();
    let dir = fx.dir.path();
    // A temporary left by a process that is gone (pid far above pid_max),
    // one of a live process (ours), and an unrelated dotfile.
    let stale = dir.join(".out.safetensors.4194999.0123456789ab.tmp");
    let live = dir.join(format!(
        ".out.safetensors.{}.0123456789ab.tmp",
        std::process::id()
    ));
    let other = dir.join(".out.safetensors.notes");
    for p in [&stale, &live, &other] {
        std::fs::write(p, "x").unwrap();
    }
    let stale_dir = dir.join(".outdir.4194999.0123456789ab.tmp");
    std::fs::create_dir(&stale_dir).unwrap();
    std::fs::write(stale_dir.join("plain.safetensors"), "x").unwrap();

    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(fx.id.recipient())],
        ..Default::default()
    })
    .unwrap();
    let out = dir.join("out.safetensors");
    let w = sealer.create(&out, vec![], None).unwrap();
    let tmps: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".out.safetensors.") && n.ends_with(".tmp") && *p != live
        })
        .collect();
    assert_eq!(tmps.len(), 1, "only the writer's own temporary: {tmps:?}");
    let mode = std::fs::metadata(&tmps[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a temporary is private while written");
    w.finish().unwrap();
    assert!(!stale.exists(), "a dead process's temporary is removed");
    assert!(live.exists() && other.exists(), "nothing else is touched");
    let probe = dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    let normal = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, normal,
        "the output gets the mode a new file gets (umask)"
    );

    // A folder output cleans stale folders of the same name.
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    let opts = f.opts();
    unseal_model_dir(&sealed, &dir.join("outdir"), &opts, false).unwrap();
    assert!(
        !stale_dir.exists(),
        "a dead process's temporary folder is removed"
    );
}

#[test]
fn a_sibling_shard_with_a_forged_header_fails_the_member_check() {
    // Unsigned: only the MAC under the model key authenticates a shard's
    // number. A planted "shard 3" with a copied number but no valid MAC
    // must not complete the set.
    let f = Folder::new();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(f.id.recipient())],
        chunk_size: 4096,
        ..Default::default()
    })
    .unwrap();
    let sealed = f.path("unsigned");
    seal_model_dir(&sealer, &f.src, &sealed, false).unwrap();
    let victim = sealed.join(SHARD[2]);
    let raw = std::fs::read(&victim).unwrap();
    let mut h = sealtensors::Header::parse_buffer(&raw).unwrap();
    let data = raw[h.data_start() as usize..].to_vec();
    h.metadata
        .as_mut()
        .unwrap()
        .insert("format".into(), "planted".into());
    let mut out = h.to_bytes();
    out.extend_from_slice(&data);
    std::fs::write(&victim, out).unwrap();
    let opts = OpenOptions {
        identities: vec![&f.id],
        ..Default::default()
    };
    let first = SealedFile::open(sealed.join(SHARD[0]), &opts).unwrap();
    let err = check_member(&first, &opts).unwrap_err();
    assert!(matches!(err.kind(), Error::BadHeaderMac), "{err}");
}

#[test]
fn an_index_that_hides_a_shard_is_refused() {
    // The shard stays, but the index no longer names it: transformers
    // would never open it and would initialise its weights at random.
    let f = Folder::new();
    let sealed = f.seal("sealed", true);
    drop_from_index(&sealed, SHARD[2]);
    let opts = f.opts();
    assert_incomplete(SealedModel::open(&sealed, &opts), "is not in it");
    let first = SealedFile::open(sealed.join(SHARD[0]), &opts).unwrap();
    assert_incomplete(check_member(&first, &opts), "is not in it");
}

#[test]
fn a_link_to_a_weight_file_is_not_copied_in_clear() {
    let f = Folder::new();
    symlink(SHARD[0], f.src.join("notes.txt")).unwrap();
    let out = f.path("sealed");
    let err = seal_model_dir(&sealer_for(&f), &f.src, &out, false).unwrap_err();
    assert!(
        err.to_string().contains("weight files under another name"),
        "{err}"
    );
    std::fs::remove_file(f.src.join("notes.txt")).unwrap();
    std::fs::hard_link(f.src.join(SHARD[1]), f.src.join("sub").join("copy.bin")).unwrap();
    let err = seal_model_dir(&sealer_for(&f), &f.src, &out, false).unwrap_err();
    assert!(
        err.to_string().contains("weight files under another name"),
        "{err}"
    );
    std::fs::remove_file(f.src.join("sub").join("copy.bin")).unwrap();
    // A .safetensors file in a subfolder would be copied in clear.
    std::fs::copy(
        f.src.join(SHARD[1]),
        f.src.join("sub").join("extra.safetensors"),
    )
    .unwrap();
    let err = seal_model_dir(&sealer_for(&f), &f.src, &out, false).unwrap_err();
    assert!(err.to_string().contains("in a subfolder"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_planted_blobs_link_does_not_widen_what_links_may_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("publisher.jwk"), "SECRET").unwrap();
    let repo = tmp.path().join("models--acme--tiny");
    let snap = repo.join("snapshots").join("abc123");
    write_sharded(&snap);
    symlink(&secret, repo.join("blobs")).unwrap();
    symlink(
        "../../blobs/publisher.jwk",
        snap.join("generation_config.json"),
    )
    .unwrap();
    let id = X25519Identity::generate().unwrap();
    let sealer = Sealer::new(SealOptions {
        recipients: vec![Box::new(id.recipient())],
        ..Default::default()
    })
    .unwrap();
    assert_unsafe_link(
        seal_model_dir(&sealer, &snap, &tmp.path().join("out"), false),
        "generation_config.json",
    );
}

#[test]
fn a_load_scope_shares_the_key_only_under_the_same_credentials_and_rechecks_swapped_shards() {
    use sealtensors::model::LoadScope;
    let f = Folder::new();
    let a = f.seal("a", true);
    let b = f.seal("b", true);
    let scope = LoadScope::new();
    let cred = [1u8; 32];
    let first = scope
        .open_member(&a.join(SHARD[0]), &f.opts(), cred)
        .unwrap();
    // The same credentials: the shared key opens the other shards, so an
    // open without identities of its own (the scope's promise is that the
    // caller's credentials are the same) reads them.
    let bare = OpenOptions {
        trusted: vec![f.signer.verifying_key()],
        ..Default::default()
    };
    let second = scope.open_member(&a.join(SHARD[1]), &bare, cred).unwrap();
    let name = &second.tensors()[0].name.clone();
    assert!(second.read_tensor(name).is_ok());
    assert_eq!(
        first.model_key().map(|k| k.id().unwrap()),
        second.model_key().map(|k| k.id().unwrap())
    );
    // Other credentials: nothing is shared.
    let e = scope
        .open_member(&a.join(SHARD[1]), &bare, [2u8; 32])
        .err()
        .expect("no key for other credentials");
    assert!(matches!(e.kind(), Error::NoMatchingKey { .. }), "{e:?}");
    // A shard swapped for another sealing's after the folder was checked:
    // its file id differs, so the folder check runs again and refuses it.
    std::fs::copy(b.join(SHARD[2]), a.join(SHARD[2])).unwrap();
    let r = scope.open_member(&a.join(SHARD[2]), &f.opts(), cred);
    let e = r.err().expect("a swapped shard must be refused");
    assert!(
        matches!(e.kind(), Error::IncompleteModel(_) | Error::BadHeaderMac),
        "{e:?}"
    );
    // Outside the scope, a shard checked before is refused now too.
    let first = SealedFile::open(a.join(SHARD[0]), &f.opts()).unwrap();
    assert_incomplete(
        check_member(&first, &f.opts()),
        "not shards of one sealed model",
    );
}
