//! The write path (DESIGN.md §4 step 1, §5): stream an update bundle's image
//! from HTTP(S), `file://` or an OCI registry (`oci://`, see `registry`)
//! through zstd and BLAKE3 into the inactive slot,
//! in one pass, with no temp file and bounded memory: two 4 MiB write
//! buffers that each frame decodes straight into (a frame of unknown size,
//! or larger than a buffer, goes through a zstd window of at most 8 MiB
//! instead) and one 3 MiB read-back buffer.
//!
//! Three threads share the work: the download thread decompresses and hashes
//! into a buffer while the writer thread writes the previous one (`writer`)
//! and the read-back thread re-reads and hashes what is already final
//! (`slot`).
//!
//! Crash-safe order (STYLE.md §4), each step only after the previous one:
//! 1. refuse a slot that GRUB may boot (the committed slot, or one armed for
//!    a trial), and an image that cannot fit;
//! 2. invalidate: the slot's record becomes `empty`, so nothing treats the
//!    half-written slot as bootable;
//! 3. write, resuming from the last verified chunk after interruptions;
//! 4. sync (fsync) and read back from the medium, compare with the request's
//!    digest (the read-back trails the download, see `slot`);
//! 5. record the slot as `written` (atomic replace on PERSIST).
//!
//! Nothing here arms the slot: that is the caller's next step, and only after
//! this returns `Ok`. The caller also sets the job's final phase (done or
//! failed) in `Progress`.
//!
//! The bundle's manifest (`NAME.manifest.json` beside `NAME.img.zst`) is used
//! when it exists, for the image size and the chunk digests; the digest in the
//! request is the trust anchor and the manifest must agree with it.

mod blockdev;
mod cancellable;
mod delta;
mod error;
mod fetch;
mod manifest;
mod registry;
mod resume;
mod slot;
mod writer;

#[cfg(debug_assertions)]
#[doc(hidden)]
pub use delta::fault as delta_fault;
pub use delta::{index_path, save_index};
pub use error::PrepareError;
pub use resume::Retry;
#[cfg(debug_assertions)]
#[doc(hidden)]
pub use slot::fault;

use crate::config::Config;
use crate::progress::{Phase, Progress};
use crate::trust::Trust;
use bootctl::record::{self, SlotRecord, SlotState};
use bootctl::store::Esp;
use bootctl::Slot;
use fetch::FetchError;
use fetch::Fetcher;
use manifest::{format_blake3, manifest_url, parse_blake3, Manifest, MAX_MANIFEST_BYTES};
use resume::{fetch_failure, with_retries, Job, Saver};
use slot::{Flags, ReadBack, SlotDevice};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wire::rpc::Reason;
use wire::signature::{
    signature_url, PublicKey, Signature, SignatureError, MAX_FILE_BYTES as SIG_MAX_BYTES,
};
use writer::Writer;

/// The saved download checkpoint, under the agent's state directory.
pub const RESUME_FILE: &str = "resume";
/// How often a checkpoint is saved at most (each save syncs the slot).
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// TLS material for HTTPS sources (KubeOS's `certs` / `mtls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM file of the CA that signs the server's certificate (else the
    /// built-in web roots).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What to write into the inactive slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareRequest {
    /// `https://…/NAME.img.zst`, `http://…` (only with `allow_http`),
    /// `file:///…`, or `oci://REGISTRY/REPO[:TAG][@sha256:…]`.
    pub url: String,
    /// The trust anchor: `blake3:<hex>` of the uncompressed image, or
    /// `sha256:<hex>` of the file at the URL (KubeOS's `check_sum`, as
    /// `sha256sum` prints it). For an `oci://` image: `blake3:`, or `sha256:`
    /// of its OCI manifest, or empty when the reference carries `@sha256:`.
    pub digest: String,
    /// Expected OS version; checked against the manifest when both are known.
    pub version: Option<String>,
    pub tls: Tls,
    /// Plain HTTP allowed (KubeOS `flag_safe`).
    pub allow_http: bool,
}

/// Where the image streams from, once resolved and checked.
pub(crate) struct Source {
    fetcher: Fetcher,
    /// The image (or layer blob) URL, for messages.
    url: String,
    manifest: Option<Manifest>,
    /// BLAKE3 of the uncompressed image; `None` until the stream gives it
    /// (a file pinned by its sha256, without a manifest).
    anchor: Option<[u8; 32]>,
    /// For an OCI layer: the sha256 and size it is addressed by.
    layer: Option<resume::Layer>,
    /// What the record keeps as the slot's source (see [`Prepared::source`]).
    pinned: String,
    /// The manifest's image digest is bound to the request by the request's
    /// own BLAKE3 pin or by an OCI manifest pinned by digest, not only by the
    /// compressed stream's SHA-256: chunks may then come from the local
    /// slots (docs/decisions.md, "Delta downloads").
    manifest_pinned: bool,
}

/// A slot written and verified, recorded on PERSIST as `written`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub slot: Slot,
    pub version: String,
    pub digest: String,
    pub size: u64,
    /// For an image from a registry, `oci://REGISTRY/REPO@sha256:<manifest>`
    /// (recorded with the slot); empty for URL bundles.
    pub source: String,
    /// The image's dm-verity parameters from its manifest (recorded with
    /// the slot; os-init mounts the slot through them).
    pub verity: Option<String>,
}

impl Prepared {
    /// What a slot record says the slot holds.
    pub fn of(rec: &SlotRecord) -> Prepared {
        Prepared {
            slot: rec.slot,
            version: rec.version.clone(),
            digest: rec.digest.clone(),
            size: rec.size,
            source: rec.source.clone(),
            verity: rec.verity.clone(),
        }
    }
}

/// Writes, verifies and records `req`'s image in the inactive slot.
pub fn prepare(
    cfg: &Config,
    req: &PrepareRequest,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Prepared, PrepareError> {
    prepare_with(cfg, req, progress, cancel, &Retry::default())
}

/// [`prepare`] with an explicit retry policy.
pub fn prepare_with(
    cfg: &Config,
    req: &PrepareRequest,
    progress: &Progress,
    cancel: &AtomicBool,
    retry: &Retry,
) -> Result<Prepared, PrepareError> {
    // Everything about the request is checked before the slot is touched.
    // What the slot record will hold must be one line of text (the record
    // writer refuses it again, after the download).
    if let Some(v) = &req.version {
        record::check_text(v).map_err(|e| PrepareError::BadRequest {
            reason: format!("version {e}"),
        })?;
    }
    record::check_text(&req.url).map_err(|e| PrepareError::BadRequest {
        reason: format!("image URL {e}"),
    })?;
    let origin = match registry::reference(&req.url)? {
        Some(reference) => Origin::Registry(reference),
        None => Origin::Url(
            Pin::parse(&req.digest, "the file")?,
            Fetcher::new(
                &req.url,
                &req.tls,
                req.allow_http,
                cfg.connect_timeout,
                cfg.read_timeout,
            )?
            .confined(&req.url, &cfg.file_sources),
        ),
    };
    let slot = cfg.inactive();
    check_not_bootable(&Esp::new(&cfg.esp), slot)?;
    let device = SlotDevice::open(slot, cfg.slot_device(slot))?;
    // With trusted keys, the signature is checked before anything else, also
    // before a slot that holds the image already is armed again. A registry
    // bundle's signature is checked while its artifact is resolved, below, so
    // its slot is written again rather than trusted from the record.
    let trust = Trust::load(&cfg.keys_dirs);
    let checked = match &origin {
        Origin::Url(pin, fetcher) if trust.required() => {
            let job = Job::plain(
                fetcher,
                &req.url,
                &device,
                progress,
                cancel,
                retry,
                cfg.read_timeout,
            );
            Some(load_manifest(&job, req, pin.blake3(), &trust)?)
        }
        _ => None,
    };
    let from_record = !(trust.required() && matches!(origin, Origin::Registry(_)));
    if from_record {
        let signed = checked.as_ref().and_then(Option::as_ref);
        if let Some(done) = already_held(cfg, req, &origin, signed, &device, progress, cancel)? {
            return Ok(done);
        }
    }
    progress.start_phase(Phase::Connecting, 0);
    let source = match origin {
        Origin::Registry(reference) => {
            registry::resolve(cfg, req, &reference, &device, progress, cancel, retry)?
        }
        Origin::Url(pin, fetcher) => {
            let job = Job::plain(
                &fetcher,
                &req.url,
                &device,
                progress,
                cancel,
                retry,
                cfg.read_timeout,
            );
            let manifest = match checked {
                Some(m) => m,
                None => load_manifest(&job, req, pin.blake3(), &trust)?,
            };
            let manifest_pinned = matches!(pin, Pin::Blake3(_));
            let (anchor, layer, pinned) = match pin {
                Pin::Blake3(b) => (Some(b), None, String::new()),
                Pin::Sha256(d) => (
                    manifest.as_ref().map(|m| m.image_digest.bytes),
                    Some(resume::Layer {
                        digest: d.clone(),
                        size: manifest.as_ref().map(|m| m.compressed_size),
                    }),
                    format!("{}@{d}", req.url),
                ),
            };
            Source {
                fetcher,
                url: req.url.clone(),
                manifest,
                anchor,
                layer,
                pinned,
                manifest_pinned,
            }
        }
    };
    let Source {
        fetcher,
        url,
        manifest,
        anchor,
        layer,
        pinned,
        manifest_pinned,
    } = source;
    if cfg.require_verity && !manifest.as_ref().is_some_and(|m| m.verity.is_some()) {
        return Err(PrepareError::BadManifest {
            url: url.clone(),
            reason: match manifest {
                Some(_) => "it names no dm-verity tree",
                None => "there is none, so no dm-verity tree",
            }
            .to_owned()
                + ", and this node requires one (require-verity = yes)",
        });
    }
    let image_size = manifest.as_ref().map(|m| m.image_size);
    check_fits(&device, image_size)?;
    let size = image_size.map_or("size unknown: no manifest".into(), |n| {
        format!("{n} bytes per the manifest")
    });
    log::info!(
        "slot {slot} ({}, {} bytes): writing {url} ({size})",
        device.path.display(),
        device.size,
    );
    // The slot's saved chunk index describes what is about to be replaced.
    delta::forget_index(&cfg.state_dir, slot)?;
    record::write(&cfg.state_dir, &SlotRecord::empty(slot))
        .map_err(|source| PrepareError::Record { slot, source })?;
    // os-init's note about this slot failing is history once it is rewritten.
    if let Err(e) = record::clear_rescue_of(&cfg.state_dir, slot) {
        log::warn!("{e}");
    }
    progress.start_phase(Phase::Downloading, image_size.unwrap_or(0));
    // With a manifest, checkpoints sit at verified chunk ends: saved to
    // PERSIST, a restarted agent continues from the last one.
    let saver = manifest.as_ref().map(|m| {
        let identity = format!(
            "slot={slot}\nurl={url}\npin={}\nlayer={}\nimage={}\ncompressed={}\nchunk_size={}\n",
            req.digest.trim(),
            layer.as_ref().map_or("", |l| l.digest.as_str()),
            m.image_digest,
            m.compressed_size,
            m.chunk_size
        );
        Saver::new(
            crate::node::agent_dir(cfg).join(RESUME_FILE),
            identity,
            SAVE_INTERVAL,
        )
    });
    if let Some(s) = &saver {
        if let Some(dir) = s.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let delta = manifest
        .as_ref()
        .filter(|_| cfg.delta && manifest_pinned)
        .map(|m| local_slots(cfg, m));
    let written = write_and_verify(
        &Job {
            fetcher: &fetcher,
            url: &url,
            manifest: manifest.as_ref(),
            device: &device,
            progress,
            cancel,
            retry,
            read_timeout: cfg.read_timeout,
            layer: layer.as_ref(),
            saver: saver.as_ref(),
            delta: delta.as_ref(),
        },
        anchor,
    );
    if let Some(s) = &saver {
        // Kept only for what a later request can continue: a network
        // failure, a cancel. Anything else starts over.
        let keep = written.as_ref().is_err_and(|e| {
            matches!(e, PrepareError::Cancelled { .. })
                || e.reason().kind() == wire::rpc::ErrorKind::Retryable
        });
        if !keep {
            s.clear();
        }
    }
    let (size, anchor) = written?;
    progress.set_phase(Phase::Recording);
    let verity = manifest.as_ref().and_then(|m| m.verity.as_ref());
    if let Some(v) = verity {
        check_verity(&device, v).map_err(|reason| PrepareError::BadManifest {
            url: url.clone(),
            reason,
        })?;
    }
    let verity = verity.map(wire::verity::Verity::to_arg);
    let version = req
        .version
        .clone()
        .or_else(|| manifest.as_ref().map(|m| m.os_version.clone()));
    let done = Prepared {
        slot,
        version: version.unwrap_or_default(),
        digest: format_blake3(&anchor),
        size,
        source: pinned,
        verity,
    };
    record_written(cfg, &done)?;
    if let Some(m) = &manifest {
        delta::save_index(&cfg.state_dir, slot, m);
    }
    log::info!(
        "slot {slot} ({}): {size} bytes written and verified, {}, version {:?}",
        device.path.display(),
        done.digest,
        done.version
    );
    Ok(done)
}

/// The slot's record when it says `written` with the very image `req` asks
/// for and the slot still reads back as that image: then there is nothing to
/// download (a proxy asks again after an agent restart, a drain, a retry).
/// `None` sends the request down the full path, which rewrites the slot.
/// `signed`: the manifest a trusted key signed for this request.
fn already_held(
    cfg: &Config,
    req: &PrepareRequest,
    origin: &Origin,
    signed: Option<&Manifest>,
    device: &SlotDevice,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Option<Prepared>, PrepareError> {
    let slot = device.slot;
    let rec = record::read(&cfg.state_dir, slot)
        .map_err(|source| PrepareError::Record { slot, source })?;
    if rec.state != SlotState::Written || rec.size == 0 || rec.size > device.size {
        return Ok(None);
    }
    // The record may be older than the node's keys (or than the revocation
    // of the key that signed it) and its require-verity: a `sha256:` pin
    // names the file, not what the signed manifest describes, and an
    // unsigned manifest could leave the verity tree out. So the slot is held
    // only as the full path would record it now.
    if cfg.require_verity && rec.verity.is_none() {
        return Ok(None);
    }
    if let Some(m) = signed {
        let now = m.slot_record(slot, SlotState::Written, rec.written_at);
        if (&rec.digest, rec.size, &rec.verity) != (&now.digest, now.size, &now.verity) {
            log::info!(
                "slot {slot} holds {} (verity {:?}), not the image the signed manifest names \
                 ({}, verity {:?}); writing it again",
                rec.digest,
                rec.verity,
                now.digest,
                now.verity
            );
            return Ok(None);
        }
    }
    if req.version.as_ref().is_some_and(|v| *v != rec.version) {
        return Ok(None);
    }
    let same = match origin {
        Origin::Url(Pin::Blake3(b), _) => rec.digest == format_blake3(b),
        Origin::Url(Pin::Sha256(d), _) => rec.source == format!("{}@{d}", req.url),
        Origin::Registry(reference) => registry::holds(req, reference, &rec)?,
    };
    if !same {
        return Ok(None);
    }
    log::info!(
        "slot {slot} is recorded as holding {} ({}); reading it back instead of downloading",
        rec.digest,
        if rec.source.is_empty() {
            &req.url
        } else {
            &rec.source
        }
    );
    progress.start_phase(Phase::Verifying, rec.size);
    let hash = slot::hash_from_medium(device, rec.size, progress, cancel)?;
    if format_blake3(hash.as_bytes()) != rec.digest {
        log::warn!(
            "slot {slot} no longer reads back as {} (it changed after it was written); \
             writing it again",
            rec.digest
        );
        return Ok(None);
    }
    Ok(Some(Prepared::of(&rec)))
}

/// The running slot as a source of chunks for `m`: read-only, up to the size
/// of the image its record names (else of `m`'s). `running: None` when it
/// cannot be opened: the delta then uses the target's own chunks only.
fn local_slots(cfg: &Config, m: &Manifest) -> delta::Delta {
    let slot = cfg.booted;
    let path = cfg.slot_device(slot);
    let rec = record::read(&cfg.state_dir, slot).ok();
    let size = rec
        .as_ref()
        .map(|r| r.size)
        .filter(|&s| s > 0)
        .unwrap_or(m.image_size);
    let running = delta::LocalSlot::open(slot, path, size)
        .map_err(|e| log::warn!("slot {slot} ({}): {e}; not copying from it", path.display()))
        .ok()
        .map(|mut r| {
            r.index = rec.and_then(|rec| delta::load_index(&cfg.state_dir, &rec));
            r
        });
    delta::Delta { running }
}

/// Step 5: the slot holds a verified image (not yet known to boot).
fn record_written(cfg: &Config, done: &Prepared) -> Result<(), PrepareError> {
    let written_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rec = SlotRecord {
        slot: done.slot,
        state: SlotState::Written,
        version: done.version.clone(),
        digest: done.digest.clone(),
        size: done.size,
        written_at,
        confirm: None,
        source: done.source.clone(),
        verity: done.verity.clone(),
    };
    record::write(&cfg.state_dir, &rec).map_err(|source| PrepareError::Record {
        slot: done.slot,
        source,
    })
}

fn check_fits(device: &SlotDevice, image_size: Option<u64>) -> Result<(), PrepareError> {
    match image_size {
        Some(size) if size > device.size => Err(PrepareError::TooLarge {
            slot: device.slot,
            path: device.path.clone(),
            image: Some(size),
            capacity: device.size,
        }),
        _ => Ok(()),
    }
}

/// GRUB boots the committed slot, and falls back to it; it boots a slot armed
/// for a trial next. Overwriting either could leave a node with nothing that
/// boots, so only a slot that is neither may be written.
fn check_not_bootable(esp: &Esp, slot: Slot) -> Result<(), PrepareError> {
    let Some((state, _)) = esp.read().chosen() else {
        log::warn!(
            "no usable A/B state in {}; writing slot {slot} anyway",
            esp.dir().display()
        );
        return Ok(());
    };
    if state.active == slot {
        return Err(PrepareError::SlotInUse {
            slot,
            reason:
                "it is the committed slot GRUB boots and falls back to (confirm or roll back first)",
        });
    }
    if state.trial == Some(slot) {
        return Err(PrepareError::SlotInUse {
            slot,
            reason: "it is armed for a trial boot (mark it failed first)",
        });
    }
    Ok(())
}

/// Where the image comes from, with what pins it.
enum Origin {
    Registry(oci::Reference),
    Url(Pin, Fetcher),
}

/// The digest in a request.
enum Pin {
    /// The uncompressed image's BLAKE3 (the bundle's `image_digest`).
    Blake3([u8; 32]),
    /// `sha256:<hex>`: of the file at a URL, checked over the whole
    /// compressed stream (the manifest, when there is one, is then only a
    /// guide that the stream's sha256 confirms or refutes); of the OCI
    /// manifest for an image from a registry.
    Sha256(String),
}

impl Pin {
    /// `sha256_of` names what a `sha256:` digest is of, for the error.
    fn parse(digest: &str, sha256_of: &str) -> Result<Pin, PrepareError> {
        if let Some(b) = parse_blake3(digest) {
            return Ok(Pin::Blake3(b));
        }
        oci::digest::parse(digest)
            .map(Pin::Sha256)
            .ok_or_else(|| PrepareError::BadRequest {
                reason: format!(
                    "digest {digest:?} is neither blake3:<64 hex digits> (the root image) nor \
                     sha256:<64 hex digits> ({sha256_of})"
                ),
            })
    }

    fn blake3(&self) -> Option<&[u8; 32]> {
        match self {
            Pin::Blake3(b) => Some(b),
            Pin::Sha256(_) => None,
        }
    }
}

/// Fetches and checks the manifest beside the image; `None` if there is none.
/// `anchor`: the BLAKE3 the manifest's `image_digest` must be, when known.
/// When `trust` requires signatures, a manifest signed by a trusted key.
/// The manifest's dm-verity parameters are those of the tree the slot now
/// holds. The image's bytes are verified, but an unsigned manifest beside an
/// image pinned by its digest is not: a root hash or salt in it that is not
/// the tree's would fail every trial boot, so it is refused here.
fn check_verity(device: &SlotDevice, v: &wire::verity::Verity) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let slot = std::fs::File::open(&device.path).map_err(|e| {
        format!(
            "open {} to check its verity tree: {e}",
            device.path.display()
        )
    })?;
    v.check_paths(&mut |at, buf| slot.read_exact_at(buf, at))
        .map_err(|e| format!("its dm-verity parameters do not fit the image: {e}"))
}

fn load_manifest(
    job: &Job,
    req: &PrepareRequest,
    anchor: Option<&[u8; 32]>,
    trust: &Trust,
) -> Result<Option<Manifest>, PrepareError> {
    let unsigned = |url: &str, detail: &str| PrepareError::Signature {
        url: url.to_owned(),
        reason: Reason::Unsigned,
        detail: detail.to_owned(),
    };
    let Some(url) = manifest_url(&req.url) else {
        if trust.required() {
            return Err(unsigned(
                &req.url,
                "not a bundle URL (NAME.img.zst), so no signed manifest can come with it",
            ));
        }
        log::info!("{}: not a .img.zst URL, no manifest to look for", req.url);
        return Ok(None);
    };
    let text = with_retries(job, &url, || {
        let (fetcher, at) = (job.fetcher.clone(), url.clone());
        cancellable::run(job.cancel, move || {
            fetcher.read_small(&at, MAX_MANIFEST_BYTES)
        })
        .map_err(|_| {
            resume::Failure::Fatal(PrepareError::Cancelled {
                slot: job.device.slot,
            })
        })?
        .map_err(|e| fetch_failure(&url, e, false))
    })?;
    let Some(text) = text else {
        if trust.required() {
            return Err(unsigned(&url, "no manifest beside the image"));
        }
        log::info!("{url}: no manifest; resuming at zstd frames, verifying end to end");
        return Ok(None);
    };
    if trust.required() {
        check_signature(job, &url, &text, trust)?;
    }
    let m = Manifest::parse(&text).map_err(|reason| PrepareError::BadManifest {
        url: url.clone(),
        reason,
    })?;
    let mismatch = |field, manifest, requested| PrepareError::ManifestMismatch {
        url: url.clone(),
        field,
        manifest,
        requested,
    };
    if anchor.is_some_and(|a| *a != m.image_digest.bytes) {
        return Err(mismatch(
            "image_digest",
            m.image_digest.to_string(),
            req.digest.clone(),
        ));
    }
    if let Some(v) = req.version.as_ref().filter(|v| **v != m.os_version) {
        return Err(mismatch("os_version", m.os_version.clone(), v.clone()));
    }
    Ok(Some(m))
}

/// The manifest `text` fetched from `url` is signed by a key of `trust`
/// (its signature is [`signature_url`]).
fn check_signature(job: &Job, url: &str, text: &str, trust: &Trust) -> Result<(), PrepareError> {
    let sig_url = signature_url(url);
    let sig = with_retries(job, &sig_url, || {
        let (fetcher, at) = (job.fetcher.clone(), sig_url.clone());
        cancellable::run(job.cancel, move || fetcher.read_small(&at, SIG_MAX_BYTES))
            .map_err(|_| {
                resume::Failure::Fatal(PrepareError::Cancelled {
                    slot: job.device.slot,
                })
            })?
            .map_err(|e| match e {
                FetchError::Oversized { max } => resume::Failure::Fatal(PrepareError::Signature {
                    url: sig_url.clone(),
                    reason: Reason::BadSignature,
                    detail: format!("the signature file is larger than {max} bytes"),
                }),
                e => fetch_failure(&sig_url, e, false),
            })
    })?;
    verify_signed(url, &sig_url, text, sig.as_deref(), trust)
}

/// Checks `sig` (found at `sig_at`; `None`: there is none) over the manifest
/// `text` from `at` against the trusted keys. One check for bundles from a
/// URL and from a registry.
pub(crate) fn verify_signed(
    at: &str,
    sig_at: &str,
    text: &str,
    sig: Option<&str>,
    trust: &Trust,
) -> Result<(), PrepareError> {
    let failure = |url: &str, reason: Reason, detail: String| PrepareError::Signature {
        url: url.to_owned(),
        reason,
        detail,
    };
    let keys = trust.public_keys();
    if keys.is_empty() {
        return Err(failure(
            at,
            Reason::UntrustedKey,
            format!(
                "signatures are required but no trusted key is usable ({})",
                trust.unusable.join("; ")
            ),
        ));
    }
    let sig = sig.ok_or_else(|| {
        failure(
            sig_at,
            Reason::Unsigned,
            "no signature beside the manifest".into(),
        )
    })?;
    let key = Signature::parse(sig)
        .and_then(|s| s.verify(text.as_bytes(), &keys).map(PublicKey::id))
        .map_err(|e| {
            let reason = match e {
                SignatureError::UntrustedKey { .. } => Reason::UntrustedKey,
                _ => Reason::BadSignature,
            };
            failure(sig_at, reason, e.to_string())
        })?;
    log::info!("{at}: signed by trusted key {key}");
    Ok(())
}

/// Steps 3 and 4: stream into the slot, fsync, finish the read-back, compare.
/// Returns the image size and its BLAKE3 (`anchor`, or when that is not
/// known up front, what the verified stream decompressed to).
fn write_and_verify(job: &Job, anchor: Option<[u8; 32]>) -> Result<(u64, [u8; 32]), PrepareError> {
    let flags = Flags::default();
    let device = job.device;
    let readback_hash = std::thread::scope(|s| {
        let readback = ReadBack::spawn(s, device, job.progress, &flags);
        let block = writer::block_size(job.manifest.map(|m| m.chunk_size));
        let writer = Writer::spawn(s, device, readback.commits(), block, job.url);
        let (streamed, anchor) = match stream_and_sync(job, writer, anchor) {
            Ok(streamed) => streamed,
            Err(e) => {
                readback.abort();
                return Err(e);
            }
        };
        job.progress.start_phase(Phase::Verifying, streamed.size);
        flags.report.store(true, Ordering::Relaxed);
        job.progress.set_bytes(readback.position());
        let hash = readback.finish(streamed.size)?;
        job.progress.set_bytes(streamed.size);
        Ok((streamed.size, hash, anchor))
    });
    let (size, hash, anchor) = readback_hash?;
    if *hash.as_bytes() != anchor {
        let (actual, expected) = (format_blake3(hash.as_bytes()), format_blake3(&anchor));
        return Err(PrepareError::VerifyFailed {
            slot: device.slot,
            path: device.path.clone(),
            actual,
            expected,
        });
    }
    Ok((size, anchor))
}

/// Streams (a pinned sha256 is checked at the end of the stream), compares
/// the decompressed image's BLAKE3 with `anchor` when both are known, syncs.
/// Returns the stream and the image's BLAKE3.
fn stream_and_sync(
    job: &Job,
    writer: Writer,
    anchor: Option<[u8; 32]>,
) -> Result<(resume::Streamed, [u8; 32]), PrepareError> {
    let streamed = resume::stream_image(job, writer)?;
    let computed = streamed.digest.map(|d| *d.as_bytes());
    let anchor = match (anchor, computed) {
        (Some(a), Some(c)) if a != c => {
            return Err(PrepareError::DigestMismatch {
                url: job.url.to_owned(),
                actual: format_blake3(&c),
                expected: format_blake3(&a),
            })
        }
        (Some(a), _) => a,
        (None, Some(c)) => c,
        (None, None) => unreachable!("without a manifest the stream's BLAKE3 is computed"),
    };
    job.device.sync()?;
    Ok((streamed, anchor))
}
