//! The download loop: source → zstd → BLAKE3 → slot, resumed after every
//! interruption from the last checkpoint instead of from the start.
//!
//! A checkpoint is a point where the compressed and uncompressed streams line
//! up and everything before it is known good:
//! - with a manifest, the end of a chunk whose frame decoded to exactly the
//!   chunk's bytes and whose BLAKE3 matched the manifest;
//! - without one, the end of a zstd frame (the whole-image hash state is
//!   saved there; the image is still verified end to end).
//!
//! A retry opens the source again with an HTTP Range request at the
//! checkpoint's compressed offset and rewrites the slot from its uncompressed
//! offset. Only checkpoints are handed to the read-back (by the writer thread,
//! once the writes before them have returned), so what it hashes is never
//! rewritten.

use super::cancellable;
use super::delta::{self, Delta, From, Plan};
use super::fetch::{classify_io, Body, FetchError, Fetcher};
use super::manifest::Manifest;
use super::slot::SlotDevice;
use super::writer::{Save, Writer};
use super::PrepareError;
use crate::progress::Progress;
use crate::stream::count::CountReader;
use crate::stream::decode::{Corrupt, DecodeInto, FrameDecoder, Truncated};
use crate::stream::hash::HashReader;
use crate::stream::inner_error;
use crate::stream::limit::{LimitExceeded, LimitReader};
use crate::stream::sha256::Sha256State;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often and how patiently to retry. Failures are counted while no new
/// checkpoint is reached, so a download that keeps making progress through
/// repeated drops finishes, and one that does not gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after consecutive failures without progress.
    pub attempts: u32,
    /// Wait before the first retry; doubles each time, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why an attempt ended early.
pub enum Failure {
    /// Worth another attempt; `progressed` when a new checkpoint was reached.
    Retry {
        cause: Cause,
        progressed: bool,
    },
    Fatal(PrepareError),
}

/// A retryable cause, kept to name in the error once retries run out.
#[derive(Debug)]
pub enum Cause {
    Fetch(FetchError),
    /// The stream ended early, at this compressed offset.
    Truncated(u64),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Fetch(e) => write!(f, "{e}"),
            Cause::Truncated(at) => write!(f, "stream ended early at compressed byte {at}"),
        }
    }
}

/// Everything the loop needs, borrowed from `prepare`.
pub struct Job<'a> {
    pub fetcher: &'a Fetcher,
    pub url: &'a str,
    pub manifest: Option<&'a Manifest>,
    pub device: &'a SlotDevice,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    pub retry: &'a Retry,
    pub read_timeout: Duration,
    /// The compressed stream's SHA-256 (an OCI layer's digest, or a KubeOS
    /// `sha256` checksum of the image file) and size, checked over the whole
    /// stream (the hash state travels with the checkpoints).
    pub layer: Option<&'a Layer>,
    /// Where checkpoints are saved so that a restarted agent continues the
    /// download (with a manifest only); `None`: kept in memory.
    pub saver: Option<&'a Saver>,
    /// Chunks may come from the local slots (delta.rs): only when the
    /// manifest's digests are bound to the request's pin by something else
    /// than the compressed stream's SHA-256 (docs/decisions.md, "Delta
    /// downloads"), since a stream with skipped frames has no such hash.
    pub delta: Option<&'a Delta>,
}

impl<'a> Job<'a> {
    /// A job reading `url` with `fetcher` for `device`, before a manifest, a
    /// layer pin or a checkpoint file is known (the manifest, the registry's
    /// artifact).
    pub fn plain(
        fetcher: &'a Fetcher,
        url: &'a str,
        device: &'a SlotDevice,
        progress: &'a Progress,
        cancel: &'a AtomicBool,
        retry: &'a Retry,
        read_timeout: Duration,
    ) -> Job<'a> {
        Job {
            fetcher,
            url,
            manifest: None,
            device,
            progress,
            cancel,
            retry,
            read_timeout,
            layer: None,
            saver: None,
            delta: None,
        }
    }
}

/// Saves download checkpoints to a file (`PERSIST/os-agent/resume`) under an
/// identity that names the download: a checkpoint is used only by the very
/// same request for the very same bundle (slot, URL, pin, manifest).
pub struct Saver {
    pub path: PathBuf,
    /// `key=value` lines naming the download.
    pub identity: String,
    /// Saves at most this often (each save syncs the slot first), the first
    /// one an interval after the saver is made: a save right after the first
    /// chunk would cost a sync of the slot to keep a second's work.
    pub interval: Duration,
    last: Mutex<Instant>,
}

/// Bytes a checkpoint may hold after its identity: a few numbers, an ETag
/// and a SHA-256 state. A longer file is not one of ours.
const MAX_CHECKPOINT_FIELDS: u64 = 64 << 10;

impl Saver {
    pub fn new(path: PathBuf, identity: String, interval: Duration) -> Saver {
        Saver {
            path,
            identity,
            interval,
            last: Mutex::new(Instant::now()),
        }
    }

    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < self.interval {
            return false;
        }
        *last = Instant::now();
        true
    }

    fn text(&self, cp: &Checkpoint) -> String {
        format!(
            "{}etag={}\nzpos={}\npos={}\nchunk={}\nzhash={}\n",
            self.identity,
            cp.etag.as_deref().unwrap_or(""),
            cp.zpos,
            cp.pos,
            cp.chunk,
            cp.zhash
                .as_ref()
                .map(Sha256State::to_text)
                .unwrap_or_default()
        )
    }

    /// The saved checkpoint, when there is one for this download.
    fn load(&self, job: &Job) -> Option<Checkpoint> {
        let max = self.identity.len() as u64 + MAX_CHECKPOINT_FIELDS;
        let text = match bootctl::small_file::read(&self.path, max) {
            Ok(text) => text?,
            Err(e) => {
                log::warn!("{}: {e}; the download starts over", self.path.display());
                return None;
            }
        };
        let rest = text.strip_prefix(&self.identity)?;
        let field = |key: &str| -> Option<String> {
            rest.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let (etag, zpos, pos, chunk, zhash) = (
            field("etag")?,
            field("zpos")?.parse().ok()?,
            field("pos")?.parse().ok()?,
            field("chunk")?.parse::<usize>().ok()?,
            field("zhash")?,
        );
        // It must be a chunk boundary of this manifest, with the hash state
        // the pin needs.
        let m = job.manifest?;
        let at = chunk.checked_sub(1).and_then(|k| m.chunks.get(k))?;
        if at.zoffset + at.zsize != zpos || at.offset + at.len != pos || pos > job.device.size {
            return None;
        }
        let zhash = match (job.layer, zhash.as_str()) {
            (None, "") => None,
            // A delta skipped frames: no hash of the stream to continue.
            (Some(_), "") if job.delta.is_some() => None,
            (Some(_), text) => Some(Sha256State::parse(text)?),
            (None, _) => return None,
        };
        Some(Checkpoint {
            zpos,
            pos,
            chunk,
            hasher: blake3::Hasher::new(),
            zhash,
            etag: (!etag.is_empty()).then_some(etag),
        })
    }

    /// Forgets the saved checkpoint (the download finished, or failed for
    /// good).
    pub fn clear(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("remove {}: {e}", self.path.display());
            }
        }
    }
}

/// The SHA-256 (and size, when known) the compressed stream must have: an
/// OCI layer blob's descriptor, or the checksum of an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: Option<u64>,
}

/// A complete stream: `size` bytes written; without a manifest, the BLAKE3
/// of what the stream decompressed to.
pub struct Streamed {
    pub size: u64,
    pub digest: Option<blake3::Hash>,
}

#[derive(Clone)]
struct Checkpoint {
    zpos: u64,
    pos: u64,
    /// Next chunk (manifest only).
    chunk: usize,
    /// Whole-image hash so far (no manifest), or a fresh one (next chunk).
    hasher: blake3::Hasher,
    /// SHA-256 of the compressed bytes before `zpos` (OCI layers only).
    zhash: Option<Sha256State>,
    /// The source's validator (ETag) when the download started: a resumed
    /// request sends it, so a changed resource is noticed.
    etag: Option<String>,
}

impl Checkpoint {
    /// Chunk `c` (the next one) is in the slot without being fetched: its
    /// frame is skipped, so the stream's SHA-256 ends here.
    fn local_chunk_done(&mut self, c: &wire::manifest::Chunk) {
        self.zpos = c.zoffset + c.zsize;
        self.pos = c.offset + c.len;
        self.chunk += 1;
        self.hasher = blake3::Hasher::new();
        self.zhash = None;
    }

    fn start(job: &Job) -> Checkpoint {
        Checkpoint {
            zpos: 0,
            pos: 0,
            chunk: 0,
            hasher: blake3::Hasher::new(),
            zhash: job.layer.map(|_| Sha256State::new()),
            etag: None,
        }
    }
}

/// Runs `op` until it succeeds, fails fatally, or fails `retry.attempts + 1`
/// times in a row without progress; sleeps with backoff in between.
pub fn with_retries<T>(
    job: &Job,
    what: &str,
    mut op: impl FnMut() -> Result<T, Failure>,
) -> Result<T, PrepareError> {
    let (mut attempts, mut in_a_row) = (0u32, 0u32);
    loop {
        attempts += 1;
        match op() {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry { cause, progressed }) => {
                in_a_row = if progressed { 1 } else { in_a_row + 1 };
                if in_a_row > job.retry.attempts {
                    return Err(give_up(job, what, attempts, cause));
                }
                let wait = job
                    .retry
                    .backoff
                    .saturating_mul(1 << (in_a_row - 1).min(16))
                    .min(job.retry.max_backoff);
                log::warn!(
                    "{what}: {cause}; retry {in_a_row}/{} in {wait:?}",
                    job.retry.attempts
                );
                sleep_unless_cancelled(job, wait)?;
            }
        }
    }
}

fn give_up(job: &Job, what: &str, attempts: u32, cause: Cause) -> PrepareError {
    let url = what.to_owned();
    match cause {
        Cause::Truncated(offset) => PrepareError::Truncated {
            url,
            attempts,
            offset,
        },
        Cause::Fetch(FetchError::Stalled) => PrepareError::Stalled {
            url,
            attempts,
            timeout: job.read_timeout,
        },
        Cause::Fetch(FetchError::Status { code, detail }) => PrepareError::Http {
            url,
            status: code,
            detail,
        },
        Cause::Fetch(e) => PrepareError::Network {
            url,
            attempts,
            reason: e.to_string(),
        },
    }
}

fn sleep_unless_cancelled(job: &Job, wait: Duration) -> Result<(), PrepareError> {
    let step = Duration::from_millis(50);
    let mut left = wait;
    while !left.is_zero() {
        cancelled(job)?;
        std::thread::sleep(left.min(step));
        left = left.saturating_sub(step);
    }
    cancelled(job)
}

fn cancelled(job: &Job) -> Result<(), PrepareError> {
    if job.cancel.load(Ordering::Relaxed) {
        return Err(PrepareError::Cancelled {
            slot: job.device.slot,
        });
    }
    Ok(())
}

/// Sorts a failure to open the source or read from it.
pub fn fetch_failure(url: &str, e: FetchError, progressed: bool) -> Failure {
    match e {
        e if e.retryable() => Failure::Retry {
            cause: Cause::Fetch(e),
            progressed,
        },
        FetchError::NotFound => Failure::Fatal(PrepareError::NotFound {
            url: url.to_owned(),
        }),
        FetchError::Status { code, detail } => Failure::Fatal(PrepareError::Http {
            url: url.to_owned(),
            status: code,
            detail,
        }),
        FetchError::Tls(reason) => Failure::Fatal(PrepareError::Tls {
            url: url.to_owned(),
            reason,
        }),
        // Only the manifest and its signature are read whole.
        FetchError::Oversized { max } => Failure::Fatal(PrepareError::BadManifest {
            url: url.to_owned(),
            reason: format!("larger than {max} bytes"),
        }),
        FetchError::Registry(reason) => Failure::Fatal(PrepareError::Registry {
            image: url.to_owned(),
            reason,
        }),
        e => Failure::Fatal(PrepareError::Network {
            url: url.to_owned(),
            attempts: 1,
            reason: e.to_string(),
        }),
    }
}

/// Streams the whole image into the slot; every write has returned when
/// this does.
pub fn stream_image(job: &Job, mut writer: Writer) -> Result<Streamed, PrepareError> {
    let saved = job.saver.and_then(|s| s.load(job));
    if let Some(cp) = &saved {
        log::info!(
            "{}: continuing the download saved before the agent stopped, at chunk {} (compressed byte {}, image byte {})",
            job.url,
            cp.chunk,
            cp.zpos,
            cp.pos
        );
    }
    let mut cp = saved.unwrap_or_else(|| Checkpoint::start(job));
    let resumed_from = cp.zpos;
    let mut plan = plan(job, cp.chunk)?;
    with_retries(job, job.url, || {
        let start = cp.zpos;
        let result = match &mut plan {
            Some(p) => walk(job, &mut writer, &mut cp, p, resumed_from),
            None => attempt(job, &mut writer, &mut cp, resumed_from, None).map(|_| None),
        };
        let result = result.map(|ended| {
            if ended == Some(Ended::Whole) {
                plan = None;
            }
        });
        if let (Err(Failure::Retry { .. }), Some(saver)) = (&result, job.saver) {
            // Save where the download stands now, so a request after this
            // one gives up (or after the agent stops) continues from here:
            // drop what came after the checkpoint, sync, save.
            if cp.zpos > 0 && job.manifest.is_some() {
                writer.restart(cp.pos).map_err(Failure::Fatal)?;
                let save = Save {
                    path: saver.path.clone(),
                    text: saver.text(&cp),
                };
                writer.commit_saving(Some(save)).map_err(Failure::Fatal)?;
            }
        }
        result.map_err(|f| match f {
            Failure::Retry { cause, .. } => Failure::Retry {
                cause,
                progressed: cp.zpos > start,
            },
            fatal => fatal,
        })
    })?;
    writer.finish()?;
    match job.layer {
        Some(layer) if cp.zhash.is_some() => check_layer(job, layer, &cp)?,
        Some(layer) => log::info!(
            "{}: the layer's {} was not checked (frames came from the local slots); \
             every chunk and the whole image are",
            job.url,
            layer.digest
        ),
        None => {}
    }
    let digest = job.manifest.is_none().then(|| cp.hasher.finalize());
    Ok(Streamed {
        size: cp.pos,
        digest,
    })
}

/// With a delta (and a manifest): where each chunk from `first` on comes
/// from; `None` when everything is fetched.
fn plan(job: &Job, first: usize) -> Result<Option<Plan>, PrepareError> {
    let (Some(d), Some(m)) = (job.delta, job.manifest) else {
        return Ok(None);
    };
    let plan = delta::scan(m, first, job.device, d, job.progress, job.cancel)?;
    job.progress
        .start_phase(crate::progress::Phase::Downloading, m.image_size);
    let s = plan.summary(m);
    log::info!(
        "{}: {} chunks in place in slot {}, {} copied from slot {}, {} to fetch \
         ({} of {} compressed bytes, {} requests)",
        job.url,
        s.in_place,
        job.device.slot,
        s.copied,
        d.running
            .as_ref()
            .map_or("-".into(), |r| r.slot.to_string()),
        s.fetched,
        s.fetch_bytes,
        m.compressed_size,
        s.requests
    );
    Ok(plan.uses_local().then_some(plan))
}

/// How a stream of fetched frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// At the end of the run asked for (or of the image).
    Run,
    /// The server sent the whole file rather than a range: the stream ran to
    /// the end of the image, and the rest of the plan is moot.
    Whole,
}

/// One attempt of a delta: the chunks from `cp` on, each kept in place,
/// copied from the running slot (fetched instead when the copy does not
/// match), or fetched with the run of chunks it starts.
fn walk(
    job: &Job,
    writer: &mut Writer,
    cp: &mut Checkpoint,
    plan: &mut Plan,
    resumed_from: u64,
) -> Result<Option<Ended>, Failure> {
    let m = job.manifest.expect("a delta has a manifest");
    job.progress.set_bytes(cp.pos);
    while let Some(from) = plan.get(cp.chunk) {
        cancelled(job).map_err(Failure::Fatal)?;
        let (k, chunk) = (cp.chunk, m.chunks[cp.chunk]);
        let local = match from {
            From::InPlace => true,
            From::Copy(at) => {
                let running = job.delta.and_then(|d| d.running.as_ref());
                let copied = running.map(|r| delta::copy_chunk(r, &chunk, at, writer));
                copied.transpose().map_err(Failure::Fatal)? == Some(true)
            }
            From::Fetch => false,
        };
        if local {
            job.progress.add_bytes(chunk.len);
            cp.local_chunk_done(&chunk);
            if from == From::InPlace {
                // Nothing to write: the block moves past the chunk (what
                // it holds before the chunk is written first).
                writer.restart(cp.pos).map_err(Failure::Fatal)?;
            }
            writer
                .commit_saving(due_save(job, cp))
                .map_err(Failure::Fatal)?;
            continue;
        }
        if from != From::Fetch {
            log::warn!(
                "{}: chunk {k} no longer reads as its digest in the running slot; fetching it",
                job.url
            );
            plan.fetch_instead(k);
        }
        let until = plan.run_end(k);
        if attempt(job, writer, cp, resumed_from, Some(until))? == Ended::Whole {
            return Ok(Some(Ended::Whole));
        }
    }
    Ok(None)
}

/// The checkpoint to save now, if one is due.
fn due_save(job: &Job, cp: &Checkpoint) -> Option<Save> {
    job.saver
        .filter(|s| job.manifest.is_some() && s.due())
        .map(|s| Save {
            path: s.path.clone(),
            text: s.text(cp),
        })
}

/// One connection's worth of the download, from checkpoint `cp` on, to the
/// end or (with a manifest) to the start of chunk `until`.
/// `resumed_from`: where this process started (a saved checkpoint, or 0).
fn attempt(
    job: &Job,
    writer: &mut Writer,
    cp: &mut Checkpoint,
    resumed_from: u64,
    mut until: Option<usize>,
) -> Result<Ended, Failure> {
    cancelled(job).map_err(Failure::Fatal)?;
    let last = until.and_then(|u| {
        let c = job.manifest?.chunks.get(u.checked_sub(1)?)?;
        Some(c.zoffset + c.zsize - 1)
    });
    match last {
        Some(last) => log::debug!(
            "{}: fetching compressed bytes {}-{last} (chunks {}..{})",
            job.url,
            cp.zpos,
            cp.chunk,
            until.unwrap_or_default()
        ),
        None if cp.zpos > 0 => log::info!(
            "{}: resuming at compressed byte {} (image byte {})",
            job.url,
            cp.zpos,
            cp.pos
        ),
        None => {}
    }
    // Opened and read on helper threads, so a source that goes silent
    // cannot keep a cancel waiting for the read timeout.
    let (fetcher, url, zpos) = (job.fetcher.clone(), job.url.to_owned(), cp.zpos);
    let validator = cp.etag.clone();
    let body = cancellable::run(job.cancel, move || {
        fetcher.open(&url, zpos, last, validator.as_deref())
    })
    .map_err(|_| {
        Failure::Fatal(PrepareError::Cancelled {
            slot: job.device.slot,
        })
    })?
    .map_err(|e| fetch_failure(job.url, e, false))?;
    if body.changed {
        // The bytes already written are of another file. Before anything
        // was handed to the read-back in this process, start over; after,
        // the read-back has hashed them: give up, a new prepare starts over.
        if cp.zpos > resumed_from {
            return Err(Failure::Fatal(PrepareError::Corrupt {
                url: job.url.to_owned(),
                offset: cp.zpos,
                reason: "the file at this URL changed during the download; prepare again".into(),
            }));
        }
        log::warn!(
            "{}: the file changed since its download began; starting over",
            job.url
        );
        *cp = Checkpoint::start(job);
    }
    if cp.zpos == 0 || cp.etag.is_none() {
        cp.etag = body
            .etag
            .clone()
            .filter(|e| bootctl::record::check_text(e).is_ok());
    }
    if body.whole && until.is_some() {
        log::warn!(
            "{}: the server does not support Range requests; downloading the rest of the image whole",
            job.url
        );
        until = None;
    }
    let ended = if until.is_some() {
        Ended::Run
    } else {
        Ended::Whole
    };
    check_length(job, &body)?;
    job.progress.set_bytes(cp.pos);
    let source = cancellable::pump(body.reader, job.cancel);
    let counted = CountReader::new(source, |n| job.progress.add_fetched(n));
    let decoder = FrameDecoder::new(counted, cp.zpos)
        .map_err(|e| Failure::Fatal(corrupt(job, cp.zpos, e.to_string())))?
        .hash_input(cp.zhash.clone());
    let limit = job.manifest.map_or(job.device.size, |m| m.image_size);
    // With a manifest every chunk is checked on the writer thread
    // (writer.rs); without one, the whole image is hashed here.
    let hashed = match job.manifest {
        Some(_) => HashReader::unhashed(decoder),
        None => HashReader::with_hasher(decoder, cp.hasher.clone()),
    };
    let mut stream = LimitReader::new(hashed, limit, cp.pos);
    let mut pos = cp.pos;
    writer.restart(pos).map_err(Failure::Fatal)?;
    expect_next(job, writer, cp, until);
    loop {
        cancelled(job).map_err(Failure::Fatal)?;
        let (block, filled) = writer.block();
        let n = match stream.decode_into(block, filled) {
            Ok(0) => return end_of_stream(job, cp, &stream).map(|()| ended),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_failure(job, e, pos)),
        };
        pos += n as u64;
        job.progress.add_bytes(n as u64);
        writer.filled(n);
        let sent = if let Some(zpos) = stream.get_ref().get_ref().boundary() {
            frame_end(job, cp, stream.get_ref(), zpos, pos)?;
            let sent = writer.commit_saving(due_save(job, cp));
            expect_next(job, writer, cp, until);
            sent
        } else {
            writer.send_if_full()
        };
        sent.map_err(Failure::Fatal)?;
        if until.is_some_and(|u| cp.chunk == u) {
            return Ok(ended);
        }
    }
}

/// Tells the writer that the chunk at `cp` is fetched next, when there is
/// one to fetch before `until`: its bytes are checked on the writer thread.
fn expect_next(job: &Job, writer: &mut Writer, cp: &Checkpoint, until: Option<usize>) {
    let Some(m) = job.manifest else { return };
    if until.is_some_and(|u| cp.chunk >= u) {
        return;
    }
    if let Some(c) = m.chunks.get(cp.chunk) {
        writer.expect(cp.chunk, c);
    }
}

/// With a manifest, the server must be serving the file the manifest describes.
fn check_length(job: &Job, body: &Body) -> Result<(), Failure> {
    match (job.manifest, body.total) {
        (Some(m), Some(total)) if total != m.compressed_size => {
            Err(Failure::Fatal(PrepareError::BadManifest {
                url: job.url.to_owned(),
                reason: format!(
                    "the image is {total} bytes, its manifest says compressed_size {}",
                    m.compressed_size
                ),
            }))
        }
        _ => Ok(()),
    }
}

/// A frame ended at compressed `zpos`, uncompressed `pos`: check it ends its
/// chunk and move the checkpoint (the chunk's hash is checked by the writer).
fn frame_end<R: Read>(
    job: &Job,
    cp: &mut Checkpoint,
    hashed: &HashReader<FrameDecoder<R>>,
    zpos: u64,
    pos: u64,
) -> Result<(), Failure> {
    let Some(m) = job.manifest else {
        *cp = Checkpoint {
            zpos,
            pos,
            chunk: 0,
            hasher: hashed.hasher().clone(),
            zhash: hashed.get_ref().input_hash().cloned(),
            etag: cp.etag.take(),
        };
        return Ok(());
    };
    let k = cp.chunk;
    let chunk = m.chunks.get(k).ok_or_else(|| {
        layout(
            job,
            format!("data continues after the last chunk, at compressed byte {zpos}"),
        )
    })?;
    if zpos != chunk.zoffset + chunk.zsize || pos != chunk.offset + chunk.len {
        let reason = format!(
            "a zstd frame ends at compressed byte {zpos} (image byte {pos}); chunk {k} should end at {} ({})",
            chunk.zoffset + chunk.zsize,
            chunk.offset + chunk.len
        );
        return Err(layout(job, reason));
    }
    // The chunk's bytes are checked on the writer thread before the block
    // that ends the chunk is committed (writer.rs, Writer::expect).
    *cp = Checkpoint {
        zpos,
        pos,
        chunk: k + 1,
        hasher: blake3::Hasher::new(),
        zhash: hashed.get_ref().input_hash().cloned(),
        etag: cp.etag.take(),
    };
    Ok(())
}

/// The whole compressed stream must be the layer its manifest names.
fn check_layer(job: &Job, layer: &Layer, cp: &Checkpoint) -> Result<(), PrepareError> {
    if let Some(size) = layer.size.filter(|s| *s != cp.zpos) {
        return Err(PrepareError::BadManifest {
            url: job.url.to_owned(),
            reason: format!("the stream is {} bytes, its manifest says {size}", cp.zpos),
        });
    }
    let actual = cp
        .zhash
        .clone()
        .map(|h| oci::digest::format(&h.finalize()))
        .unwrap_or_default();
    if actual != layer.digest {
        return Err(PrepareError::LayerMismatch {
            url: job.url.to_owned(),
            actual,
            expected: layer.digest.clone(),
        });
    }
    Ok(())
}

/// The source is exhausted: complete, or cut short (worth a retry).
fn end_of_stream<R: Read>(
    job: &Job,
    cp: &Checkpoint,
    stream: &LimitReader<HashReader<FrameDecoder<R>>>,
) -> Result<(), Failure> {
    let zpos = stream.get_ref().get_ref().boundary().unwrap_or(cp.zpos);
    match job.manifest {
        Some(m) if cp.chunk < m.chunks.len() => Err(Failure::Retry {
            cause: Cause::Truncated(zpos),
            progressed: false,
        }),
        _ if cp.pos == 0 => Err(Failure::Fatal(corrupt(job, 0, "no image data".into()))),
        _ => Ok(()),
    }
}

/// Sorts an error that came up through the adapter stack while reading.
fn read_failure(job: &Job, e: io::Error, pos: u64) -> Failure {
    if let Some(c) = inner_error::<Corrupt>(&e) {
        return Failure::Fatal(corrupt(job, c.offset, c.reason.to_owned()));
    }
    if let Some(t) = inner_error::<Truncated>(&e) {
        return Failure::Retry {
            cause: Cause::Truncated(t.offset),
            progressed: false,
        };
    }
    if let Some(l) = inner_error::<LimitExceeded>(&e) {
        return Failure::Fatal(match job.manifest {
            Some(_) => PrepareError::BadManifest {
                url: job.url.to_owned(),
                reason: format!(
                    "the image decompresses to more than the manifest's image_size {}",
                    l.limit
                ),
            },
            None => PrepareError::TooLarge {
                slot: job.device.slot,
                path: job.device.path.clone(),
                image: None,
                capacity: job.device.size,
            },
        });
    }
    log::debug!("{}: read failed at image byte {pos}: {e}", job.url);
    fetch_failure(job.url, classify_io(e), false)
}

fn corrupt(job: &Job, offset: u64, reason: String) -> PrepareError {
    PrepareError::Corrupt {
        url: job.url.to_owned(),
        offset,
        reason,
    }
}

fn layout(job: &Job, reason: String) -> Failure {
    Failure::Fatal(PrepareError::BadManifest {
        url: job.url.to_owned(),
        reason,
    })
}
