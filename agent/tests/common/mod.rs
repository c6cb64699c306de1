//! Test fixtures for the write path: synthetic bundles written with the
//! project's one manifest writer (`wire::manifest`, docs/bundle.md), a node made of files (two
//! slot files, an ESP directory, a PERSIST directory), and a loopback
//! HTTP/1.1 server with fault injection.
#![allow(dead_code)] // each test binary uses its own subset

pub mod server;

use agent::config::{Config, Overrides};
use agent::prepare::Retry;
use bootctl::record::{self, SlotRecord};
use bootctl::store::Esp;
use bootctl::Slot;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deterministic pseudo-random bytes (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Image-like bytes that compress about as well as a root filesystem does:
/// 4 KiB blocks that are zero (30%), text-like (40%) or random (30%).
pub fn synthetic_chunk(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 12] = [
        b"usr ",
        b"lib ",
        b"systemd ",
        b"kernel ",
        b"module ",
        b"x86_64 ",
        b"config ",
        b"0x1f ",
        b"ELF ",
        b"init ",
        b"share\n",
        b"etc/",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let block = 4096.min(len - out.len());
        let kind = rng.next() % 10;
        let start = out.len();
        if kind < 3 {
            out.resize(start + block, 0);
        } else if kind < 7 {
            while out.len() < start + block {
                out.extend_from_slice(WORDS[(rng.next() % 12) as usize]);
            }
            out.truncate(start + block);
        } else {
            while out.len() < start + block {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            out.truncate(start + block);
        }
    }
    out
}

pub fn synthetic_image(len: usize, seed: u64) -> Vec<u8> {
    synthetic_chunk(&mut Rng::new(seed), len)
}

/// What `build_bundle` wrote.
#[derive(Debug, Clone)]
pub struct BundleMeta {
    pub digest: String,
    pub manifest: String,
    pub image_size: u64,
    pub compressed_size: u64,
    /// (zoffset, zsize) of each chunk's frame.
    pub frames: Vec<(u64, u64)>,
}

impl BundleMeta {
    /// Compressed offset of the frame holding compressed byte `z`.
    pub fn frame_start(&self, z: u64) -> u64 {
        self.frames.iter().rev().find(|(o, _)| *o <= z).unwrap().0
    }
}

/// Writes `NAME.img.zst` (one zstd frame per chunk) to `zst` and returns the
/// manifest JSON, field for field as image-builder's `Manifest` serializes.
pub fn build_bundle(
    name: &str,
    version: &str,
    chunk_size: usize,
    chunks: impl Iterator<Item = Vec<u8>>,
    zst: &mut impl Write,
) -> BundleMeta {
    let mut whole = blake3::Hasher::new();
    let (mut digests, mut frames, mut zoffset, mut size) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for chunk in chunks {
        assert!(chunk.len() <= chunk_size);
        whole.update(&chunk);
        let frame = zstd::bulk::compress(&chunk, 3).unwrap();
        zst.write_all(&frame).unwrap();
        digests.push((*blake3::hash(&chunk).as_bytes(), frame.len() as u64));
        frames.push((zoffset, frame.len() as u64));
        zoffset += frame.len() as u64;
        size += chunk.len() as u64;
    }
    let image_digest = wire::Digest::blake3(*whole.finalize().as_bytes());
    let digest = image_digest.to_string();
    // The one manifest writer (wire::manifest), as os-image uses it.
    let manifest = wire::manifest::Manifest::from_chunks(
        name,
        version,
        &format!("{name}.img.zst"),
        size,
        image_digest,
        chunk_size as u64,
        digests,
    )
    .to_json();
    BundleMeta {
        digest,
        manifest,
        image_size: size,
        compressed_size: zoffset,
        frames,
    }
}

/// A bundle held in memory.
pub struct Bundle {
    pub image: Vec<u8>,
    pub zst: Vec<u8>,
    pub meta: BundleMeta,
}

pub fn bundle(image: Vec<u8>, chunk_size: usize, version: &str) -> Bundle {
    let mut zst = Vec::new();
    let meta = build_bundle(
        "os-2",
        version,
        chunk_size,
        image.chunks(chunk_size).map(<[u8]>::to_vec),
        &mut zst,
    );
    Bundle { image, zst, meta }
}

/// A request for version 2 of the image at `url`, plain HTTP allowed.
pub fn request(url: String, digest: &str) -> agent::prepare::PrepareRequest {
    agent::prepare::PrepareRequest {
        url,
        digest: digest.into(),
        version: Some("2".into()),
        tls: agent::prepare::Tls::default(),
        allow_http: true,
    }
}

/// Prepares `req` on `node` with [`quick_retry`], not cancelled.
pub fn prepare(
    node: &Node,
    req: &agent::prepare::PrepareRequest,
) -> Result<agent::prepare::Prepared, agent::prepare::PrepareError> {
    agent::prepare::prepare_with(
        &node.cfg,
        req,
        &agent::progress::Progress::default(),
        &std::sync::atomic::AtomicBool::new(false),
        &quick_retry(),
    )
}

/// Retries fast enough for tests.
pub fn quick_retry() -> Retry {
    Retry {
        attempts: 2,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// A node made of files: slot A is active (booted, committed in the ESP),
/// slot B is the one an upgrade writes.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    active: Vec<u8>,
    env: [Vec<u8>; 2],
}

impl Node {
    pub fn new(slot_size: u64) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root_b = dir.path().join("root-b");
        std::fs::write(&root_b, vec![0xEE; slot_size as usize]).unwrap();
        Node::with_slot_b(dir, root_b)
    }

    /// Slot B at `root_b` (already created, e.g. on a small tmpfs).
    pub fn with_slot_b(dir: tempfile::TempDir, root_b: PathBuf) -> Node {
        Node::with_slots(dir, root_b, synthetic_image(256 << 10, 99))
    }

    /// Slot A (the running one) holding `active`, slot B holding `inactive`.
    pub fn with_images(active: Vec<u8>, inactive: &[u8]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root_b = dir.path().join("root-b");
        std::fs::write(&root_b, inactive).unwrap();
        Node::with_slots(dir, root_b, active)
    }

    fn with_slots(dir: tempfile::TempDir, root_b: PathBuf, active: Vec<u8>) -> Node {
        let root_a = dir.path().join("root-a");
        std::fs::write(&root_a, &active).unwrap();
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(&esp).unwrap();
        Esp::new(&esp).init(Slot::A, false).unwrap();
        let env = [0, 1].map(|i| std::fs::read(Esp::new(&esp).copy_path(i)).unwrap());
        let mut o = Overrides::default();
        for (k, v) in [
            ("root-a", &root_a),
            ("root-b", &root_b),
            ("esp", &esp),
            ("state-dir", &dir.path().join("persist")),
        ] {
            o.set(k, v.to_str().unwrap()).unwrap();
        }
        o.set("booted", "A").unwrap();
        o.set("connect-timeout", "2").unwrap();
        o.set("read-timeout", "1").unwrap();
        let cfg = o
            .resolve(Path::new("/nonexistent"), Path::new("/dev"), "")
            .unwrap();
        Node {
            dir,
            cfg,
            active,
            env,
        }
    }

    pub fn slot_b(&self) -> Vec<u8> {
        std::fs::read(&self.cfg.root_b).unwrap()
    }

    pub fn record_b(&self) -> SlotRecord {
        record::read(&self.cfg.state_dir, Slot::B).unwrap()
    }

    /// After a failure: the active slot and the boot state are exactly as
    /// before (nothing armed), and slot B is not recorded as holding an image.
    pub fn assert_untouched(&self) {
        self.assert_not_armed();
        assert_eq!(
            self.record_b().state,
            record::SlotState::Empty,
            "slot B record"
        );
    }

    /// The active slot and both ESP env copies are byte-for-byte as before.
    pub fn assert_not_armed(&self) {
        assert!(
            std::fs::read(&self.cfg.root_a).unwrap() == self.active,
            "active slot A changed"
        );
        for i in 0..2 {
            let now = std::fs::read(Esp::new(&self.cfg.esp).copy_path(i)).unwrap();
            assert!(now == self.env[i], "ESP env copy {} changed", i + 1);
        }
    }
}

/// An image ending with its dm-verity tree, as os-image makes it, bundled in
/// `chunk`-byte chunks, with the tree's parameters.
pub fn verity_bundle(chunk: usize) -> (Bundle, wire::verity::Verity) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, synthetic_image(200 * 4096, 11)).unwrap();
    let v = image_builder::verity::append_tree(&path, [0x42; 32]).unwrap();
    (bundle(std::fs::read(&path).unwrap(), chunk, "2"), v)
}

/// `b`'s manifest naming `verity` instead (an unsigned manifest says what it likes).
pub fn manifest_naming(b: &Bundle, verity: Option<&wire::verity::Verity>) -> String {
    let mut m = wire::manifest::Manifest::parse(&b.meta.manifest).unwrap();
    m.verity = verity.cloned();
    m.to_json()
}
