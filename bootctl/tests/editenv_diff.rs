//! Differential test: random create/set/unset/list sequences run through both
//! `bootctl env` and the real `grub-editenv`; after every step the two files must
//! be byte-identical, both tools must agree on success or failure, and `list`
//! must print the same bytes.
//!
//! `BOOTCTL_DIFF_SEED` replays a run; `BOOTCTL_DIFF_STEPS` makes it longer.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for test input, and reproducible from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NAME_POOL: &[&[u8]] = &[
    b"a",
    b"ab",
    b"saved_entry",
    b"x",
    b"ab_tries",
    b"k\\",
    b"#c",
    b"n m",
];
const CHARS: &[u8] = b"abcXYZ019 _-.#=\\\n\t/";

fn random_name(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(70) {
        return NAME_POOL[rng.below(NAME_POOL.len())].to_vec();
    }
    let len = rng.below(12);
    // '=' cannot be part of a name: grub-editenv splits NAME=VALUE at the first one.
    let mut name: Vec<u8> = (0..len)
        .map(|_| CHARS[rng.below(CHARS.len())])
        .filter(|&c| c != b'=')
        .collect();
    // grub-editenv's argp would take a leading '-' as an option.
    if name.first() == Some(&b'-') {
        name[0] = b'_';
    }
    name
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0..=5 => rng.below(8),
        6..=8 => rng.below(200),
        _ => 700 + rng.below(400), // at and past the block's capacity
    };
    (0..len).map(|_| CHARS[rng.below(CHARS.len())]).collect()
}

fn run(program: &str, file: &Path, verb: &str, args: &[Vec<u8>]) -> Output {
    let mut cmd = Command::new(program);
    cmd.arg(file).arg(verb);
    cmd.args(args.iter().map(|a| OsString::from_vec(a.clone())));
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn grub_editenv() -> String {
    let path = "/usr/bin/grub-editenv";
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install grub2-common (the reference implementation)"
    );
    path.to_owned()
}

#[test]
fn random_sequences_match_grub_editenv() {
    let seed: u64 = std::env::var("BOOTCTL_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let steps: usize = std::env::var("BOOTCTL_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    eprintln!("seed {seed} (replay with BOOTCTL_DIFF_SEED={seed}), {steps} steps");
    let reference = grub_editenv();
    let bootctl = env!("CARGO_BIN_EXE_bootctl");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    let mut rng = Rng(seed);
    let mut stats = [0usize; 2]; // [ok steps, failing steps]

    for step in 0..steps {
        let (verb, args): (&str, Vec<Vec<u8>>) = match rng.below(100) {
            0..=7 => ("create", vec![]),
            8..=61 => {
                let n = 1 + rng.below(3);
                let mut args = vec![];
                for _ in 0..n {
                    let mut arg = random_name(&mut rng);
                    if !rng.chance(3) {
                        arg.push(b'=');
                        arg.extend(random_value(&mut rng));
                    }
                    args.push(arg);
                }
                ("set", args)
            }
            62..=81 => (
                "unset",
                (0..1 + rng.below(2))
                    .map(|_| random_name(&mut rng))
                    .collect(),
            ),
            82..=97 => ("list", vec![]),
            _ => {
                // Damage both files identically: the tools must fail alike (or
                // recreate alike, for a missing file).
                let damage = rng.below(4);
                for f in [&ours, &theirs] {
                    match damage {
                        0 => {
                            let _ = std::fs::remove_file(f);
                        }
                        1 => std::fs::write(f, b"# GRUB Environment Block\n").unwrap(),
                        2 => std::fs::write(f, [0u8; 1024]).unwrap(),
                        _ => {
                            let mut b = std::fs::read(f).unwrap_or_default();
                            if let Some(last) = b.last_mut() {
                                *last = b'x';
                            }
                            std::fs::write(f, b).unwrap();
                        }
                    }
                }
                continue;
            }
        };
        let a = run_bootctl(bootctl, verb, &ours, &args);
        let b = run(&reference, &theirs, verb, &args);
        let context = || {
            format!(
                "seed {seed}, step {step}: {verb} {:?}",
                args.iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>()
            )
        };
        assert_eq!(
            a.status.success(),
            b.status.success(),
            "{}: bootctl {:?} {} vs grub-editenv {:?} {}",
            context(),
            a.status,
            String::from_utf8_lossy(&a.stderr),
            b.status,
            String::from_utf8_lossy(&b.stderr)
        );
        stats[usize::from(!a.status.success())] += 1;
        assert_eq!(
            std::fs::read(&ours).ok(),
            std::fs::read(&theirs).ok(),
            "{}: files differ",
            context()
        );
        if verb == "list" {
            assert_eq!(a.stdout, b.stdout, "{}: list output differs", context());
        }
    }
    eprintln!(
        "{} steps succeeded, {} failed alike in both tools",
        stats[0], stats[1]
    );
    assert!(
        stats[1] > 0,
        "the run never exercised an error case; raise BOOTCTL_DIFF_STEPS"
    );
}

fn run_bootctl(bootctl: &str, verb: &str, file: &Path, args: &[Vec<u8>]) -> Output {
    let mut cmd = Command::new(bootctl);
    cmd.arg("env").arg(verb).arg(file);
    cmd.args(args.iter().map(|a| OsString::from_vec(a.clone())));
    cmd.output().unwrap()
}

/// A block written by something else (the ESP is not ours alone) with NUL
/// bytes in a value and a name: GRUB hands both on as C strings, so they end
/// there. bootctl listed `A\0` and refused the copy GRUB's script read as A.
#[test]
fn nul_bytes_end_names_and_values_as_in_grub() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let mut block = b"# GRUB Environment Block\n".to_vec();
    block.extend_from_slice(b"ab_active=A\0junk\nk\0hidden=2\nx=1\\\0y\n");
    block.resize(1024, b'#');
    std::fs::write(&file, &block).unwrap();
    let theirs = run(&grub_editenv(), &file, "list", &[]);
    let ours = run_bootctl(env!("CARGO_BIN_EXE_bootctl"), "list", &file, &[]);
    assert!(theirs.status.success(), "{theirs:?}");
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout),
        "{ours:?}"
    );
    assert_eq!(ours.stdout, b"ab_active=A\nk=2\nx=1\n");
}
