//! Which Node an OSInstance belongs to. An OSInstance is named after its Node, but a Node can
//! be deleted and registered again under the same name (a reinstalled machine): the new Node
//! has a new uid and must not inherit the old one's operation or status. The proxy creates
//! its OSInstance with an owner reference to its Node's uid, so the garbage collector removes
//! it with the Node; until it has, the operator and the proxy ignore an OSInstance owned by
//! another uid (and the operator deletes it).

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::OsInstance;

/// How an OSInstance relates to the Node of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Owned by this Node (its uid).
    Owned,
    /// No Node owner reference (created by an older proxy or by hand): taken to be this Node's.
    Unclaimed,
    /// Owned by another Node of the same name, one that was deleted.
    Stale,
}

/// The owner reference an OSInstance carries to `node`; `None` for a node without a uid.
pub fn node_owner(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.metadata.name.clone()?,
        uid: node.metadata.uid.clone()?,
        ..OwnerReference::default()
    })
}

fn node_owners(osi: &OsInstance) -> impl Iterator<Item = &OwnerReference> {
    osi.metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "Node" && o.api_version == "v1")
}

/// Whether `osi` belongs to the Node whose uid is `node_uid`.
pub fn ownership(osi: &OsInstance, node_uid: &str) -> Ownership {
    let mut owners = node_owners(osi).peekable();
    if owners.peek().is_none() {
        return Ownership::Unclaimed;
    }
    if owners.any(|o| o.uid == node_uid) {
        Ownership::Owned
    } else {
        Ownership::Stale
    }
}

/// The uids of the Nodes `osi` names as owners.
pub fn owner_uids(osi: &OsInstance) -> Vec<String> {
    node_owners(osi).map(|o| o.uid.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::OsInstanceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(uid: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn an_instance_is_owned_by_the_uid_it_names_only() {
        let mut osi = OsInstance::new("n1", OsInstanceSpec::default());
        assert_eq!(ownership(&osi, "u1"), Ownership::Unclaimed);
        osi.metadata.owner_references = Some(vec![node_owner(&node("u1")).unwrap()]);
        assert_eq!(ownership(&osi, "u1"), Ownership::Owned);
        assert_eq!(ownership(&osi, "u2"), Ownership::Stale);
        assert_eq!(owner_uids(&osi), ["u1"]);
    }
}
