//! Node objects the size and shape of real ones, for tests and benchmarks that must not
//! measure a cluster of toy objects. A kubelet-registered Node of a production cluster is
//! 10-30 KB of JSON, most of it `status.images` (every image on the node, each with its
//! digest and tag references) and `metadata.managedFields` (one entry per writer: kubeadm,
//! the kubelet and its status updates, the controller manager, the CNI, kubectl).

use serde_json::{json, Value};

/// Images a node reports in `status.images` (the kubelet reports up to 50 by default,
/// `--node-status-max-images`).
pub const NODE_IMAGES: usize = 50;

/// A Node named `name` as a kubelet registers it and keeps it up to date, about 19 KB of
/// JSON: labels and annotations of kubeadm, a CNI and CSI, five conditions, capacity and
/// allocatable, addresses, daemon endpoints, `nodeInfo` with `osImage`, 50 images, ten
/// attached volumes and six managed-fields entries (five writers, the kubelet for the Node
/// and for its status). `ready` sets the `Ready` condition; everything else varies with the
/// name only, so two calls with the same arguments give the same object.
pub fn node(name: &str, os_image: &str, ready: bool) -> Value {
    let seed = fnv(name);
    let ip = format!(
        "10.{}.{}.{}",
        (seed >> 8) % 256,
        (seed >> 16) % 256,
        seed % 254 + 1
    );
    let zone = ["a", "b", "c"][(seed % 3) as usize];
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels(name, zone),
            "annotations": annotations(name, &ip),
            "managedFields": managed_fields(),
        },
        "spec": {
            "podCIDR": format!("10.244.{}.0/24", seed % 256),
            "podCIDRs": [format!("10.244.{}.0/24", seed % 256)],
            "providerID": format!("openstack:///{}", uuid(seed)),
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": resources("15500m", "63310100Ki", "456740340443"),
            "capacity": resources("16", "65843668Ki", "495607172Ki"),
            "conditions": conditions(ready),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images(seed),
            "volumesAttached": volumes(seed).iter()
                .map(|v| json!({"name": v, "devicePath": ""}))
                .collect::<Vec<_>>(),
            "volumesInUse": volumes(seed),
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": uuid(seed ^ 0x5bd1_e995),
                "containerRuntimeVersion": "containerd://1.7.24",
                "kernelVersion": "6.1.0-28-amd64",
                "kubeProxyVersion": "v1.33.1",
                "kubeletVersion": "v1.33.1",
                "machineID": format!("{:032x}", u128::from(seed) * 0x9e37_79b9_7f4a_7c15),
                "operatingSystem": "linux",
                "osImage": os_image,
                "systemUUID": uuid(seed ^ 0xc2b2_ae35),
            },
        },
    })
}

fn labels(name: &str, zone: &str) -> Value {
    json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": "m5.4xlarge",
        "beta.kubernetes.io/os": "linux",
        "failure-domain.beta.kubernetes.io/region": "eu-west-1",
        "failure-domain.beta.kubernetes.io/zone": format!("eu-west-1{zone}"),
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "m5.4xlarge",
        "topology.kubernetes.io/region": "eu-west-1",
        "topology.kubernetes.io/zone": format!("eu-west-1{zone}"),
        "topology.ebs.csi.aws.com/zone": format!("eu-west-1{zone}"),
    })
}

fn annotations(name: &str, ip: &str) -> Value {
    json!({
        "csi.volume.kubernetes.io/nodeid":
            format!("{{\"ebs.csi.aws.com\":\"i-0{:016x}\"}}", fnv(name)),
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "projectcalico.org/IPv4Address": format!("{ip}/16"),
        "projectcalico.org/IPv4VXLANTunnelAddr": format!("192.168.{}.0", fnv(name) % 256),
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    })
}

fn resources(cpu: &str, memory: &str, storage: &str) -> Value {
    json!({
        "cpu": cpu, "ephemeral-storage": storage, "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        "memory": memory, "pods": "110",
    })
}

/// The five conditions a kubelet reports, `Ready` as asked.
pub fn conditions(ready: bool) -> Value {
    let at = "2025-06-01T08:00:00Z";
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": at, "lastTransitionTime": at,
        })
    };
    json!([
        condition(
            "NetworkUnavailable",
            "False",
            "CalicoIsUp",
            "Calico is running on this node"
        ),
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        if ready {
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            )
        } else {
            condition(
                "Ready",
                "False",
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false",
            )
        },
    ])
}

/// `status.images`: a digest reference and a tag reference each, as containerd reports them.
fn images(seed: u64) -> Value {
    const REPOS: [&str; 10] = [
        "registry.k8s.io/kube-proxy",
        "docker.io/calico/node",
        "docker.io/calico/cni",
        "registry.k8s.io/coredns/coredns",
        "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver",
        "quay.io/prometheus/node-exporter",
        "docker.io/grafana/promtail",
        "registry.example.com/payments/api-server",
        "registry.example.com/search/indexer-worker",
        "ghcr.io/example-org/batch/nightly-report",
    ];
    let list: Vec<Value> = (0..NODE_IMAGES)
        .map(|i| {
            let repo = REPOS[i % REPOS.len()];
            let digest: String = (0..4)
                .map(|k| format!("{:016x}", mix(seed ^ (i as u64) << 8 ^ k)))
                .collect();
            let tag = format!("v1.{}.{}", i / REPOS.len(), mix(seed + i as u64) % 20);
            // Images pulled through a mirror are also known by the mirror's name.
            let mut names = vec![format!("{repo}@sha256:{digest}"), format!("{repo}:{tag}")];
            if i % 5 != 0 {
                names.push(format!("mirror.example.com/{repo}:{tag}"));
            }
            json!({
                "names": names,
                "sizeBytes": 10_000_000 + mix(seed ^ i as u64) % 900_000_000,
            })
        })
        .collect();
    Value::Array(list)
}

/// CSI volumes attached to the node, as the attach-detach controller names them.
fn volumes(seed: u64) -> Vec<String> {
    (0..10u64)
        .map(|i| {
            format!(
                "kubernetes.io/csi/ebs.csi.aws.com^vol-0{:016x}",
                mix(seed ^ i << 20)
            )
        })
        .collect()
}

/// `metadata.managedFields` of the usual writers of a Node (server-side field tracking).
fn managed_fields() -> Value {
    let at = "2025-06-01T08:00:00Z";
    let entry = |manager: &str, operation: &str, subresource: Option<&str>, fields: Value| {
        let mut e = json!({
            "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields,
            "manager": manager, "operation": operation, "time": at,
        });
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    };
    let condition = |type_: &str| {
        (
            format!("k:{{\"type\":\"{type_}\"}}"),
            json!({".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                   "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}),
        )
    };
    let conditions: serde_json::Map<String, Value> =
        ["DiskPressure", "MemoryPressure", "PIDPressure", "Ready"]
            .into_iter()
            .map(condition)
            .collect();
    let label_fields: serde_json::Map<String, Value> = [
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ]
    .into_iter()
    .map(|l| (format!("f:{l}"), json!({})))
    .collect();
    let mut kubelet_labels = label_fields.clone();
    kubelet_labels.insert(".".into(), json!({}));
    json!([
        entry(
            "kubeadm",
            "Update",
            None,
            json!({"f:metadata": {"f:annotations": {
            "f:kubeadm.alpha.kubernetes.io/cri-socket": {}},
            "f:labels": {"f:node-role.kubernetes.io/worker": {}}}})
        ),
        entry(
            "kubelet",
            "Update",
            None,
            json!({"f:metadata": {
            "f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
            "f:labels": kubelet_labels},
            "f:spec": {"f:providerID": {}}})
        ),
        entry(
            "kube-controller-manager",
            "Update",
            None,
            json!({
            "f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}},
            "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, "v:\"10.244.0.0/24\"": {}}}})
        ),
        entry(
            "calico-node",
            "Update",
            Some("status"),
            json!({
            "f:metadata": {"f:annotations": {"f:projectcalico.org/IPv4Address": {},
                "f:projectcalico.org/IPv4VXLANTunnelAddr": {}}},
            "f:status": {"f:conditions": {"k:{\"type\":\"NetworkUnavailable\"}": {
                ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {},
                "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}})
        ),
        entry(
            "kubelet",
            "Update",
            Some("status"),
            json!({
            "f:metadata": {"f:annotations": {"f:csi.volume.kubernetes.io/nodeid": {}}},
            "f:status": {
                "f:allocatable": {"f:cpu": {}, "f:ephemeral-storage": {}, "f:memory": {}},
                "f:capacity": {"f:cpu": {}, "f:ephemeral-storage": {}, "f:memory": {}},
                "f:conditions": conditions,
                "f:images": {},
                "f:nodeInfo": {"f:bootID": {}, "f:containerRuntimeVersion": {},
                    "f:kernelVersion": {}, "f:kubeProxyVersion": {}, "f:kubeletVersion": {},
                    "f:osImage": {}},
            }})
        ),
        entry(
            "kubectl-label",
            "Update",
            None,
            json!({"f:metadata": {"f:labels":
            label_fields.into_iter().take(3).collect::<serde_json::Map<String, Value>>()}})
        ),
    ])
}

/// A UUID-shaped string from `seed`.
fn uuid(seed: u64) -> String {
    let a = mix(seed);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// FNV-1a of a name: a stable seed (not a security boundary).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads a seed over all bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_node_is_about_twenty_kilobytes_and_a_valid_node() {
        let v = node("node-00042", "KubeOS v1", true);
        let bytes = serde_json::to_vec(&v).unwrap().len();
        assert!((18_000..=24_000).contains(&bytes), "{bytes} bytes");
        let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(v.clone()).unwrap();
        let status = n.status.unwrap();
        assert_eq!(status.images.unwrap().len(), NODE_IMAGES);
        assert_eq!(status.node_info.unwrap().os_image, "KubeOS v1");
        assert_eq!(n.metadata.managed_fields.unwrap().len(), 6);
        assert_eq!(v, node("node-00042", "KubeOS v1", true), "deterministic");
        assert_ne!(v, node("node-00043", "KubeOS v1", true));
    }
}
