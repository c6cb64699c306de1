//! The dm-verity hash tree of a root image (wire::verity has the layout):
//! read the image once, hash every 4096-byte block with the salt, build the
//! upper levels in memory (32 bytes per data block at the bottom, 16 MiB for
//! a 2 GiB image) and append the tree to the image, top level first.

use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use wire::verity::{block_hash as hash, level_sizes, Verity, BLOCK};

/// Appends the hash tree to `image` (a whole number of blocks) and returns
/// its parameters.
pub fn append_tree(image: &Path, salt: [u8; 32]) -> Result<Verity> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("open {}", image.display()))?;
    let size = file.metadata()?.len();
    if size == 0 || size % BLOCK != 0 {
        bail!(
            "{}: {size} bytes is not a whole number of {BLOCK}-byte blocks",
            image.display()
        );
    }
    let data_blocks = size / BLOCK;
    // Level 0: the hashes of the data blocks, packed; then each level above.
    let mut levels: Vec<Vec<u8>> = vec![Vec::with_capacity((data_blocks * 32) as usize)];
    let mut reader = BufReader::with_capacity(1 << 20, &mut file);
    let mut block = vec![0u8; BLOCK as usize];
    for _ in 0..data_blocks {
        reader
            .read_exact(&mut block)
            .with_context(|| format!("read {}", image.display()))?;
        levels[0].extend_from_slice(&hash(&salt, &block));
    }
    drop(reader);
    let sizes = level_sizes(data_blocks);
    let root_hash = if sizes.is_empty() {
        // One data block: the root is its hash, and there is no tree.
        levels[0][..32].try_into().expect("one hash")
    } else {
        for (i, &blocks) in sizes.iter().enumerate() {
            levels[i].resize((blocks * BLOCK) as usize, 0);
            if i + 1 < sizes.len() {
                let above = levels[i]
                    .chunks(BLOCK as usize)
                    .flat_map(|b| hash(&salt, b))
                    .collect();
                levels.push(above);
            }
        }
        let top = levels.last().expect("a level");
        hash(&salt, &top[..BLOCK as usize])
    };
    file.seek(SeekFrom::Start(size))?;
    for level in levels.iter().take(sizes.len()).rev() {
        file.write_all(level)
            .with_context(|| format!("append the verity tree to {}", image.display()))?;
    }
    file.sync_all()?;
    let v = Verity {
        data_blocks,
        hash_offset: size,
        salt,
        root_hash,
    };
    debug_assert_eq!(file.metadata()?.len(), v.total_bytes());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn veritysetup_verify(image: &Path, v: &Verity) -> bool {
        let out = Command::new("veritysetup")
            .arg("verify")
            .arg("--no-superblock")
            .arg(format!("--data-blocks={}", v.data_blocks))
            .arg(format!("--hash-offset={}", v.hash_offset))
            .arg(format!("--salt={}", wire::digest::hex(&v.salt)))
            .arg(image)
            .arg(image)
            .arg(wire::digest::hex(&v.root_hash))
            .output()
            .expect("veritysetup (cryptsetup-bin) is needed: scripts/install-deps.sh");
        out.status.success()
    }

    #[test]
    fn the_tree_is_the_one_veritysetup_verifies_and_a_flipped_byte_is_not() {
        let t = tempfile::tempdir().unwrap();
        for blocks in [1u64, 2, 129, 128 * 128 + 3] {
            let image = t.path().join(format!("img-{blocks}"));
            let data: Vec<u8> = (0..blocks * BLOCK).map(|i| (i * 7 / 3) as u8).collect();
            std::fs::write(&image, &data).unwrap();
            let v = append_tree(&image, [0x5a; 32]).unwrap();
            assert_eq!(std::fs::metadata(&image).unwrap().len(), v.total_bytes());
            assert!(veritysetup_verify(&image, &v), "{blocks} blocks");
            assert_eq!(check_paths(&image, &v), Ok(()), "{blocks} blocks");
            let mut bytes = std::fs::read(&image).unwrap();
            bytes[(blocks * BLOCK / 2) as usize] ^= 1;
            std::fs::write(&image, &bytes).unwrap();
            assert!(
                !veritysetup_verify(&image, &v),
                "{blocks} blocks, byte flipped"
            );
        }
    }

    fn check_paths(image: &Path, v: &Verity) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(image).unwrap();
        v.check_paths(&mut |at, buf| f.read_exact_at(buf, at))
    }

    /// The agent checks a manifest's verity against the tree it wrote: what a
    /// manifest can get wrong about a genuine image is refused.
    #[test]
    fn check_paths_refuses_parameters_that_are_not_the_trees() {
        let t = tempfile::tempdir().unwrap();
        for blocks in [1u64, 2, 129, 128 * 128 + 3] {
            let image = t.path().join(format!("img-{blocks}"));
            let data: Vec<u8> = (0..blocks * BLOCK).map(|i| (i * 5 / 3) as u8).collect();
            std::fs::write(&image, &data).unwrap();
            let v = append_tree(&image, [0x33; 32]).unwrap();
            let mut wrong_root = v.clone();
            wrong_root.root_hash[0] ^= 1;
            let err = check_paths(&image, &wrong_root).unwrap_err();
            assert!(err.contains("not the root hash"), "{blocks}: {err}");
            // Another salt with a root that matches the top block under it:
            // the lower levels give it away. (One data block has no tree: any
            // salt with its root is a pair dm-verity accepts.)
            let mut other_salt = v.clone();
            other_salt.salt[31] ^= 1;
            let top = if blocks == 1 { 0 } else { v.hash_offset };
            let mut block = vec![0u8; BLOCK as usize];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(&image)
                .unwrap()
                .read_exact_at(&mut block, top)
                .unwrap();
            other_salt.root_hash = hash(&other_salt.salt, &block);
            assert_eq!(
                check_paths(&image, &other_salt).is_ok(),
                blocks == 1,
                "{blocks}"
            );
            // The last data block's path is checked too, not only the first's.
            if blocks > 128 {
                let mut bytes = std::fs::read(&image).unwrap();
                bytes[((blocks - 1) * BLOCK) as usize] ^= 1;
                std::fs::write(&image, &bytes).unwrap();
                let err = check_paths(&image, &v).unwrap_err();
                assert!(err.contains(&format!("data block {}", blocks - 1)), "{err}");
            }
        }
    }

    #[test]
    fn a_partial_block_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let image = t.path().join("img");
        std::fs::write(&image, vec![0u8; 5000]).unwrap();
        assert!(append_tree(&image, [0; 32]).is_err());
    }
}
