//! Removes OSInstances whose Node is gone: deleted, or deleted and registered again under the
//! same name (another uid). The garbage collector does this for OSInstances owned by their
//! Node (the proxy creates them so); this covers a slow collector and OSInstances from before
//! owner references (created without one, whose Node is gone).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::ResourceExt;
use tracing::{info, warn};

use super::reconcile::Shared;
use crate::crd::{ownership, OsInstance, Ownership};

/// Whether `osi` looks orphaned by the cached Nodes (`uids` by name).
fn suspect(osi: &OsInstance, uids: &HashMap<String, String>) -> bool {
    match uids.get(&osi.name_any()) {
        None => true,
        Some(uid) => ownership(osi, uid) == Ownership::Stale,
    }
}

/// Deletes the OSInstances whose Node is gone. The caches lag behind the server (a Node just
/// registered may not be cached yet), so each suspect is checked against the API first and
/// deleted only with its uid as precondition.
pub(super) async fn remove_orphaned_instances(sh: &Shared) {
    let uids: HashMap<String, String> = sh
        .nodes
        .state()
        .iter()
        .filter_map(|n| Some((n.name_any(), n.uid()?)))
        .collect();
    let nodes: Api<Node> = Api::all(sh.client.clone());
    for osi in sh.instances.state().iter().filter(|i| suspect(i, &uids)) {
        let name = osi.name_any();
        let orphaned = match nodes.get_opt(&name).await {
            Ok(None) => true,
            Ok(Some(node)) => {
                ownership(osi, node.uid().as_deref().unwrap_or_default()) == Ownership::Stale
            }
            Err(e) => {
                warn!(node = %name, error = %e, "cannot tell whether the node of an OSInstance is gone");
                false
            }
        };
        if !orphaned {
            continue;
        }
        let api: Api<OsInstance> =
            Api::namespaced(sh.client.clone(), &osi.namespace().unwrap_or_default());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: osi.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => info!(node = %name, "removed the OSInstance of a deleted node"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                warn!(node = %name, error = %e, "cannot remove the OSInstance of a deleted node")
            }
        }
    }
}
