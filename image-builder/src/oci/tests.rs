use super::*;
use crate::chunked::ChunkWriter;
use crate::manifest::ManifestFile;
use std::os::unix::fs::MetadataExt;

const CHUNK: usize = 64 << 10;

/// A small real bundle `dir/os-VERSION.{img.zst,manifest.json}`, made with
/// the library's chunk writer; returns the manifest path.
fn bundle(dir: &Path, version: &str) -> PathBuf {
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i / 7) as u8 ^ version.as_bytes()[0])
        .collect();
    let name = format!("os-{version}");
    let image = format!("{name}.img.zst");
    let file = File::create(dir.join(&image)).unwrap();
    let mut w = ChunkWriter::new(file, CHUNK, 3, 1).unwrap();
    w.write_all(&data).unwrap();
    let (_, chunks) = w.finish().unwrap();
    let manifest = Manifest {
        name: name.clone(),
        os_version: version.into(),
        arch: "x86_64".into(),
        image,
        image_size: data.len() as u64,
        image_digest: wire::Digest::blake3(*blake3::hash(&data).as_bytes()),
        compressed_size: chunks.iter().map(|c| c.zsize).sum(),
        chunk_size: CHUNK as u64,
        chunks,
        verity: None,
    };
    let path = dir.join(format!("{name}.manifest.json"));
    manifest.save(&path).unwrap();
    path
}

fn index(layout: &Path) -> Vec<(Descriptor, Option<String>)> {
    parse_layout_index(&std::fs::read(layout.join(INDEX)).unwrap()).unwrap()
}

fn blobs(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn layout_holds_the_bundle_files_under_their_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = bundle(dir.path(), "2");
    let layout = dir.path().join("layout");
    let w = write_layout(&manifest_path, &layout, None).unwrap();

    assert_eq!(
        std::fs::read(layout.join(OCI_LAYOUT)).unwrap(),
        OCI_LAYOUT_CONTENT
    );
    let entries = index(&layout);
    assert_eq!(entries.len(), 1);
    let (entry, tag) = &entries[0];
    assert_eq!(tag.as_deref(), Some("2"), "default tag: os_version");
    assert_eq!(entry.media_type, OCI_MANIFEST);
    assert_eq!(entry.digest, w.digest);

    let manifest = std::fs::read(w.blob_path(&w.digest)).unwrap();
    assert_eq!(digest::sha256(&manifest), w.digest);
    assert_eq!(entry.size, manifest.len() as u64);
    let a = BundleArtifact::parse(&manifest, OCI_MANIFEST).unwrap();
    assert_eq!(a, w.artifact);

    let config = std::fs::read(&manifest_path).unwrap();
    assert_eq!(a.config.digest, digest::sha256(&config));
    assert_eq!(a.config.size, config.len() as u64);
    assert_eq!(
        std::fs::read(w.blob_path(&a.config.digest)).unwrap(),
        config
    );
    let image = std::fs::read(dir.path().join("os-2.img.zst")).unwrap();
    assert_eq!(a.layer.digest, digest::sha256(&image));
    assert_eq!(a.layer.size, image.len() as u64);
    assert_eq!(std::fs::read(w.blob_path(&a.layer.digest)).unwrap(), image);

    let bundle = Manifest::load(&manifest_path).unwrap();
    assert_eq!(a.layer.annotation(TITLE), Some("os-2.img.zst"));
    let annotation = |k: &str| {
        a.annotations
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(annotation(VERSION), Some("2"));
    assert_eq!(
        annotation(IMAGE_DIGEST),
        Some(bundle.image_digest.to_string().as_str())
    );

    let mut expected = vec![
        w.digest.clone(),
        a.config.digest.clone(),
        a.layer.digest.clone(),
    ];
    expected
        .iter_mut()
        .for_each(|d| *d = d.replace("sha256:", ""));
    expected.sort();
    assert_eq!(blobs(&layout), expected, "three blobs and no temp files");
    let leftovers: Vec<_> = std::fs::read_dir(&layout)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn writing_the_same_bundle_again_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = bundle(dir.path(), "2");
    let layout = dir.path().join("layout");
    let first = write_layout(&manifest_path, &layout, None).unwrap();
    let index_bytes = std::fs::read(layout.join(INDEX)).unwrap();
    let blob_list = blobs(&layout);
    let again = write_layout(&manifest_path, &layout, None).unwrap();
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.manifest, first.manifest);
    assert_eq!(again.layer_write, BlobWrite::Present);
    assert_eq!(std::fs::read(layout.join(INDEX)).unwrap(), index_bytes);
    assert_eq!(blobs(&layout), blob_list);
}

#[test]
fn a_second_tag_keeps_the_first_and_a_tag_is_replaced_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = bundle(dir.path(), "2");
    let v3 = bundle(dir.path(), "3");
    let layout = dir.path().join("layout");
    let w2 = write_layout(&v2, &layout, None).unwrap();
    let w3 = write_layout(&v3, &layout, None).unwrap();
    assert_ne!(w2.digest, w3.digest);
    let tags = |layout: &Path| -> Vec<(String, String)> {
        index(layout)
            .into_iter()
            .map(|(d, t)| (t.unwrap(), d.digest))
            .collect()
    };
    assert_eq!(
        tags(&layout),
        [
            ("2".into(), w2.digest.clone()),
            ("3".into(), w3.digest.clone())
        ]
    );
    let latest = write_layout(&v3, &layout, Some("latest")).unwrap();
    assert_eq!(latest.digest, w3.digest, "the tag is not in the manifest");
    write_layout(&v3, &layout, Some("2")).unwrap();
    assert_eq!(
        tags(&layout),
        [
            ("2".into(), w3.digest.clone()),
            ("3".into(), w3.digest.clone()),
            ("latest".into(), w3.digest.clone())
        ]
    );
}

#[test]
fn the_layer_is_hard_linked_on_one_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = bundle(dir.path(), "2");
    let w = write_layout(&manifest_path, &dir.path().join("layout"), None).unwrap();
    assert_eq!(w.layer_write, BlobWrite::Linked);
    let image = std::fs::metadata(dir.path().join("os-2.img.zst")).unwrap();
    let blob = std::fs::metadata(w.blob_path(&w.artifact.layer.digest)).unwrap();
    assert_eq!((blob.dev(), blob.ino()), (image.dev(), image.ino()));
    assert_eq!(image.nlink(), 2);
    let config = std::fs::metadata(w.blob_path(&w.artifact.config.digest)).unwrap();
    assert_eq!(config.nlink(), 1, "the small config blob is a copy");
    assert_eq!(config.mode() & 0o777, 0o644, "blobs are world-readable");
}

#[test]
fn the_layer_is_copied_when_it_cannot_be_linked() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = bundle(dir.path(), "2");
    let layout = dir.path().join("layout");
    prepare_layout(&layout).unwrap();
    let image = dir.path().join("os-2.img.zst");
    let (digest, size) = sha256_file(&image).unwrap();
    let wrong = digest::sha256(b"something else");
    let e = copy_blob(&image, &blob_path(&layout, &wrong), &wrong).unwrap_err();
    assert!(
        format!("{e:#}").contains("changed while being copied"),
        "{e:#}"
    );
    assert_eq!(
        blobs(&layout),
        Vec::<String>::new(),
        "no blob, no temp file left"
    );
    copy_blob(&image, &blob_path(&layout, &digest), &digest).unwrap();
    let blob = blob_path(&layout, &digest);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(&image).unwrap()
    );
    assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 1);
    assert_eq!(
        put_blob_file(&layout, &digest, size, &image).unwrap(),
        BlobWrite::Present
    );

    // Across filesystems (the layout on tmpfs) the verified copy is used.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let w = write_layout(&manifest_path, &shm.path().join("layout"), None).unwrap();
    let blob = std::fs::metadata(w.blob_path(&digest)).unwrap();
    if blob.dev() != std::fs::metadata(&image).unwrap().dev() {
        assert_eq!(w.layer_write, BlobWrite::Copied);
        assert_eq!(
            std::fs::read(w.blob_path(&digest)).unwrap(),
            std::fs::read(&image).unwrap()
        );
    }
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = bundle(dir.path(), "2");
    let msg = |r: Result<LayoutArtifact>| format!("{:#}", r.unwrap_err());

    let e = msg(write_layout(
        &manifest_path,
        &dir.path().join("l1"),
        Some("-x"),
    ));
    assert!(e.contains("not a valid OCI tag"), "{e}");

    let e = msg(write_layout(&manifest_path, dir.path(), None));
    assert!(e.contains("neither empty nor an OCI image layout"), "{e}");

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join(OCI_LAYOUT), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    let e = msg(write_layout(&manifest_path, &other, None));
    assert!(e.contains("not an OCI image layout 1.0.0"), "{e}");

    let untagged = dir.path().join("untagged");
    std::fs::create_dir(&untagged).unwrap();
    std::fs::write(untagged.join(OCI_LAYOUT), OCI_LAYOUT_CONTENT).unwrap();
    let d = Descriptor::new(OCI_MANIFEST, &digest::sha256(b"m"), 1);
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":1}}]}}"#,
        d.media_type, d.digest
    );
    std::fs::write(untagged.join(INDEX), index).unwrap();
    let e = msg(write_layout(&manifest_path, &untagged, None));
    assert!(e.contains("without a tag"), "{e}");

    let image = dir.path().join("os-2.img.zst");
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    let e = msg(write_layout(&manifest_path, &dir.path().join("l2"), None));
    assert!(e.contains("incomplete or mismatched bundle"), "{e}");
}
