//! `decide` when selection changes: nodes deselected mid-operation, and nodes two OS
//! resources select.

use super::tests::{cluster, names, node, now, running, spec, V1, V2};
use super::*;

fn in_pool(node: NodeView, pool: &str) -> NodeView {
    NodeView {
        labels: [(NODE_SELECTOR_LABEL.to_string(), pool.to_string())].into(),
        ..node
    }
}

fn pool_spec(maxunavailable: i64, pool: &str) -> OsSpec {
    OsSpec {
        nodeselector: pool.into(),
        ..spec(maxunavailable)
    }
}

#[test]
fn a_node_deselected_in_flight_counts_until_it_finishes_or_times_out() {
    let spec = pool_spec(1, "a");
    let moved = in_pool(running("b", NodePhase::Draining, 60), "elsewhere");
    let d = decide(
        &spec,
        &cluster(vec![in_pool(node("a", V1), "a"), moved]),
        now(),
    );
    assert!(d.start.is_empty(), "started {:?} next to it", d.start);
    assert_eq!(d.counts.in_progress, 1);
    assert_eq!(
        d.hold,
        Some(Hold::NoCapacity {
            unavailable: 1,
            limit: 1
        })
    );
    assert!(d.next_check.is_some(), "its timeout is watched");

    let stuck = in_pool(running("b", NodePhase::Draining, 7200), "elsewhere");
    let d = decide(
        &spec,
        &cluster(vec![in_pool(node("a", V1), "a"), stuck]),
        now(),
    );
    assert_eq!(d.mark_failed.len(), 1);
    assert_eq!(d.mark_failed[0].node, "b");

    // Finished: no longer this rollout's node.
    let done = in_pool(node("b", V2), "elsewhere");
    let d = decide(
        &spec,
        &cluster(vec![in_pool(node("a", V1), "a"), done]),
        now(),
    );
    assert_eq!(d.start, names(&["a"]));
    assert_eq!(d.counts.target, 1);
}

#[test]
fn nodes_another_os_selects_for_another_target_are_reported_and_not_started() {
    let mine = pool_spec(3, crate::crd::ALL_LABEL);
    let mut theirs = pool_spec(3, "x");
    theirs.osversion = "KubeOS 3.0".into();
    let nodes = vec![in_pool(node("a", V1), "x"), node("b", V1)];
    let observed =
        Observed::from_cluster(&[], &[]).with_contested(&mine, &[("ns/other".into(), &theirs)]);
    assert!(observed.contested.is_empty());
    let observed = Observed {
        nodes,
        ..Observed::default()
    }
    .with_contested(&mine, &[("ns/other".into(), &theirs)]);
    assert_eq!(observed.contested["a"], ["ns/other"]);
    let d = decide(&mine, &observed, now());
    assert_eq!(d.start, names(&["b"]));
    assert_eq!(d.contested.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        d.hold,
        Some(Hold::Contested {
            nodes: 1,
            by: names(&["ns/other"])
        })
    );
    // The same target from both: nothing to fight over.
    let same = pool_spec(3, "x");
    let observed = Observed {
        nodes: vec![in_pool(node("a", V1), "x")],
        ..Observed::default()
    }
    .with_contested(&mine, &[("ns/other".into(), &same)]);
    assert!(observed.contested.is_empty());
}
