//! The demo's scenario as assertions (issue 5), on real OVMF, GRUB, kernel and
//! os-agent in one QEMU machine: upgrade to v2, manual rollback, automatic
//! fallback from the broken v3, a refused rollback; and data written under
//! /etc and /var on v1 survives every one of those steps. And the upgrade to
//! v2 once more, pulled from an OCI registry that `os-image oci --push`
//! published it to.

use bootctl::record::SlotState;
use bootctl::state::AbState;
use bootctl::Slot;
use e2e::demo::{self, Report, Source, ETC_NOTE, VAR_NOTE};
use e2e::disk::{self, Disk};
use sha2::{Digest as _, Sha256};

fn status(r: &Report, step: usize) -> &str {
    &r.statuses[step].1
}

/// (version, slot) the node ran after each step.
fn running(r: &Report) -> Vec<(&str, &str)> {
    r.steps
        .iter()
        .map(|s| (s.version.as_str(), s.slot.as_str()))
        .collect()
}

/// Boots each step took.
fn boots(r: &Report) -> Vec<usize> {
    r.steps.iter().map(|s| s.boots).collect()
}

#[test]
fn upgrade_rollback_fallback_and_refusal_keep_etc_and_var() {
    let dir = e2e::fixture_dir().join("demo");
    let art = demo::build_bundles(&dir);
    let image = dir.join("node.img");
    let logs = e2e::repo_root().join("target/e2e-logs/demo");
    let report = demo::run_scenario(&art, &image, &logs, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", demo::timeline(&report));

    let running = running(&report);
    assert_eq!(
        running,
        [("1", "A"), ("2", "B"), ("1", "A"), ("1", "A"), ("1", "A")]
    );
    let boots = boots(&report);
    // v3: one trial boot (the health gate fails it at once), then A.
    assert_eq!(boots, [1, 1, 1, 2, 0]);
    let s = &report.steps;
    assert!(s[1].downloaded > 1 << 20, "v2 was not downloaded");
    assert_eq!(s[2].downloaded, 0, "the rollback downloaded something");
    assert!(s[3].downloaded > 1 << 20, "v3 was not downloaded");

    assert!(
        status(&report, 1).contains("committed:  B"),
        "{}",
        status(&report, 1)
    );
    assert!(
        status(&report, 2).contains("committed:  A"),
        "{}",
        status(&report, 2)
    );
    let fallback = status(&report, 3);
    assert!(fallback.contains("committed:  A"), "{fallback}");
    assert!(
        fallback.contains("last failure: slot B version 3: ")
            && fallback.contains("30-demo-service"),
        "{fallback}"
    );
    let v3_trial = s[3].shown.join("\n");
    assert!(v3_trial.contains("OS-DEMO version=3 BROKEN"), "{v3_trial}");

    let (out, rc) = &report.refused;
    assert_eq!(*rc, 1, "{out}");
    assert!(
        out.contains("refused: slot B holds version 3, whose trial boot failed"),
        "{out}"
    );

    for (step, notes) in &report.notes {
        assert!(
            notes.contains(ETC_NOTE) && notes.contains(VAR_NOTE),
            "after {step:?}: {notes}"
        );
    }
    // /var's factory content: what each image ships is added on its first
    // boot, what PERSIST has is kept (`first` as v1 wrote it), and what a
    // newer image added stays after going back. /opt/cni likewise, and what
    // the node wrote there on v1 stays.
    let factory: Vec<&str> = report
        .notes
        .iter()
        .map(|(_, n)| n.rsplit_once("factory: ").map_or("", |(_, f)| f.trim()))
        .collect();
    assert_eq!(
        factory,
        [
            "first=1 from-v1 cni=demo-plugin,from-node,",
            "first=1 from-v1 from-v2 cni=demo-plugin,from-node,",
            "first=1 from-v1 from-v2 cni=demo-plugin,from-node,",
            "first=1 from-v1 from-v2 from-v3 cni=demo-plugin,from-node,",
            "first=1 from-v1 from-v2 from-v3 cni=demo-plugin,from-node,",
        ],
        "{:?}",
        report.notes
    );

    // The disk agrees: A committed, B's failed trial on record.
    let esp = Disk::open(&image);
    for copy in ["ab1/env", "ab2/env"] {
        let state = AbState::decode_strict(&esp.read_esp(copy)).expect("valid env copy");
        assert_eq!(
            (state.active, state.trial, state.fail),
            (Slot::A, None, Some(Slot::B))
        );
    }
    assert_eq!(disk::slot_record(&image, Slot::A).state, SlotState::Good);
    let b = disk::slot_record(&image, Slot::B);
    assert_eq!((b.state, b.version.as_str()), (SlotState::Failed, "3"));
}

/// Boot v1, then `os-agent upgrade --image 10.0.2.2:PORT/os:2` from a plain,
/// anonymous docker-registry on loopback: the node reboots into v2 on B and
/// its health gate commits it; the bytes came from the registry's layer blob.
#[test]
fn upgrade_from_an_oci_registry() {
    let dir = e2e::fixture_dir().join("demo-registry");
    let art = demo::build_versions(&dir, &["1", "2"]);
    let image = dir.join("node.img");
    let logs = e2e::repo_root().join("target/e2e-logs/demo-registry");
    let report = demo::run_scenario_with(
        &art,
        &image,
        &logs,
        &mut |l| eprintln!("{l}"),
        Source::Registry,
        2,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", demo::timeline(&report));

    let running = running(&report);
    assert_eq!(running, [("1", "A"), ("2", "B")]);
    let boots = boots(&report);
    assert_eq!(boots, [1, 1]);
    assert!(
        status(&report, 1).contains("committed:  B"),
        "{}",
        status(&report, 1)
    );
    assert_eq!(
        report.steps[0].downloaded, 0,
        "booting v1 downloaded something"
    );
    let downloaded = report.steps[1].downloaded;
    assert!(
        downloaded > 1 << 20,
        "v2 was not downloaded: {downloaded} bytes"
    );

    // The layer is the bundle's compressed image. The guest (through QEMU's
    // user-mode network, from 127.0.0.1) fetched parts of it by blob Range:
    // a delta, the rest copied from its running slot A (under dm-verity).
    let layer = std::fs::read(&art.bundles[1].image).unwrap();
    let layer_digest: String = Sha256::digest(&layer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let log = report.registry_log.as_deref().expect("no registry log");
    let gets: Vec<_> = e2e::registry::blob_gets(log)
        .into_iter()
        .filter(|g| g.digest == format!("sha256:{layer_digest}"))
        .collect();
    assert!(
        !gets.is_empty() && gets.iter().all(|g| g.status == 206),
        "the layer was not fetched by ranges: {gets:?}\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(&format!("GET /v2/os/blobs/sha256:{layer_digest}")))
            .all(|l| l.contains("os-agent/")),
        "{log}"
    );
    let fetched: u64 = gets.iter().map(|g| g.bytes).sum();
    assert!(
        fetched > 0 && fetched < layer.len() as u64,
        "fetched {fetched} of the {}-byte layer: nothing came from slot A",
        layer.len()
    );
    // The step's blob bytes also count the config blob (the manifest).
    assert!(downloaded >= fetched, "{downloaded} < {fetched}");
}
