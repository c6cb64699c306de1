//! The real `kubectl` against fakekube, each test once with every kubectl at hand: the one on
//! PATH and Debian's kubernetes-client 1.20 as scripts/fetch-kubectl.sh unpacks it (or only
//! `KUBECTL=/path` when set): `kubectl kustomize deploy/` applied with
//! `kubectl apply -f -` on a server that starts with no CRD, the sample OS applied, and
//! `kubectl get os,osinstance` showing the CRDs' printer columns; an invalid OS refused by
//! kubectl's own validation against the published schema and, with `--validate=false`, by
//! the server's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fakekube::FakeApiServer;
use kube::api::{Api, Patch, PatchParams};
use operator::crd::{Os, OsInstance, OsInstanceSpec};
use serde_json::json;

const NS: &str = "os-upgrade-system";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The kubectl binaries to test with.
fn kubectls() -> Vec<String> {
    if let Ok(one) = std::env::var("KUBECTL") {
        return vec![one];
    }
    let mut all = vec!["kubectl".to_string()];
    let cache = std::env::var("KUBECTL_CACHE")
        .unwrap_or_else(|_| "/var/cache/ab-os-test/kubernetes-client".into());
    let debian = Path::new(&cache).join("kubectl");
    if debian.exists() {
        all.push(debian.to_string_lossy().into_owned());
    }
    all
}

/// A kubectl bound to one fake server, with its own HOME and discovery cache.
struct Kubectl {
    program: String,
    kubeconfig: tempfile::NamedTempFile,
    home: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &FakeApiServer, program: &str) -> Kubectl {
        let mut kubeconfig = tempfile::NamedTempFile::new().unwrap();
        kubeconfig
            .write_all(server.kubeconfig(NS).as_bytes())
            .unwrap();
        Kubectl {
            program: program.to_string(),
            kubeconfig,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs kubectl with `args`, `stdin` as its input; blocking, so call it from
    /// `spawn_blocking` while the server runs on the runtime.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let program = &self.program;
        let mut child = Command::new(program)
            .args(args)
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .env("KUBECONFIG", self.kubeconfig.path())
            .env("HOME", self.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (Debian package kubernetes-client): {e}"));
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

async fn kubectl(k: &std::sync::Arc<Kubectl>, args: &[&str], stdin: &[u8]) -> Output {
    let k = std::sync::Arc::clone(k);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        k.run(&args, &stdin)
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "kubectl failed: {stderr}\n{stdout}");
    stdout
}

fn rendered(program: &str) -> Vec<u8> {
    let out = Command::new(program)
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sample(path: &str) -> Vec<u8> {
    std::fs::read(deploy_dir().join(path)).unwrap()
}

/// The columns of a `kubectl get` table line, split on runs of two or more spaces.
fn columns(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn assert_path_exists(p: &Path) {
    assert!(p.exists(), "{}", p.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomized_deploy_applies_and_get_prints_the_printer_columns() {
    for program in kubectls() {
        eprintln!("with {program}");
        kustomized_deploy_applies_and_get_prints_the_printer_columns_with(&program).await;
    }
}

async fn kustomized_deploy_applies_and_get_prints_the_printer_columns_with(program: &str) {
    assert_path_exists(&deploy_dir().join("kustomization.yaml"));
    let server = FakeApiServer::start_without_crds().await;
    let k = std::sync::Arc::new(Kubectl::new(&server, program));
    let applied = ok(&kubectl(&k, &["apply", "-f", "-"], &rendered(&k.program)).await);
    for line in [
        "namespace/os-upgrade-system created",
        "customresourcedefinition.apiextensions.k8s.io/os.upgrade.openeuler.org created",
        "customresourcedefinition.apiextensions.k8s.io/osinstances.upgrade.openeuler.org created",
        "deployment.apps/os-operator created",
        "daemonset.apps/os-proxy created",
        "clusterrole.rbac.authorization.k8s.io/os-proxy created",
        "validatingadmissionpolicy.admissionregistration.k8s.io/os-proxy-own-node created",
    ] {
        assert!(applied.contains(line), "{line:?} missing from:\n{applied}");
    }
    // A second apply of the same manifests writes nothing. (kubectl still sends the
    // PodDisruptionBudget's selector, whose patch strategy is `replace`, and so reports it
    // "configured" when it knows policy/v1; the server finds nothing to change.)
    let rv = server.resource_version();
    let again = ok(&kubectl(&k, &["apply", "-f", "-"], &rendered(&k.program)).await);
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")
            || l == "poddisruptionbudget.policy/os-operator configured"),
        "second apply:\n{again}"
    );
    assert_eq!(
        server.resource_version(),
        rv,
        "the second apply changed objects"
    );

    let created = ok(&kubectl(&k, &["apply", "-f", "-"], &sample("samples/sample-os.yaml")).await);
    assert_eq!(created.trim(), "os.upgrade.openeuler.org/os-sample created");
    let client = server.client();
    let stored = server
        .log()
        .into_iter()
        .find(|e| e.resource == "os" && e.verb == "create")
        .unwrap()
        .object;
    assert_eq!(
        (
            &stored["spec"]["failureBudget"],
            &stored["spec"]["nodeTimeoutSeconds"]
        ),
        (&json!(1), &json!(3600)),
        "fields the sample leaves out are defaulted by the server from the CRD"
    );

    let instances: Api<OsInstance> = Api::namespaced(client.clone(), NS);
    instances
        .create(
            &Default::default(),
            &OsInstance::new("node-1", OsInstanceSpec::default()),
        )
        .await
        .unwrap();
    let status = json!({"status": {"phase": "Preparing", "currentVersion": "KubeOS 1.0.0",
        "targetVersion": "KubeOS 1.0.1", "progress": 40}});
    instances
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let out = ok(&kubectl(&k, &["get", "os,osinstance"], b"").await);
    let tables: Vec<Vec<Vec<String>>> = out
        .split("\n\n")
        .map(|t| t.lines().filter(|l| !l.is_empty()).map(columns).collect())
        .filter(|t: &Vec<Vec<String>>| !t.is_empty())
        .collect();
    assert_eq!(tables.len(), 2, "{out}");
    let (os_table, osi_table) = (&tables[0], &tables[1]);
    assert_eq!(
        os_table[0],
        [
            "NAME",
            "VERSION",
            "OPS",
            "STATE",
            "TARGET",
            "UPDATED",
            "IN-PROGRESS",
            "FAILED",
            "AGE"
        ],
        "{out}"
    );
    // Status is empty until the operator reports: those cells print empty, which the
    // column split cannot see, so the age comes right after the ops.
    assert_eq!(
        os_table[1][..3],
        [
            "os.upgrade.openeuler.org/os-sample",
            "KubeOS 1.0.1",
            "upgrade"
        ]
    );
    assert!(os_table[1][3].ends_with('s'), "an age: {out}");
    assert_eq!(
        osi_table[0],
        [
            "NAME",
            "NODESTATUS",
            "PHASE",
            "CURRENT",
            "TARGET",
            "PROGRESS",
            "STEP",
            "ERROR",
            "SYSCONFIG-CURRENT",
            "AGE"
        ],
        "{out}"
    );
    assert_eq!(
        osi_table[1][..6],
        [
            "osinstance.upgrade.openeuler.org/node-1",
            "idle",
            "Preparing",
            "KubeOS 1.0.0",
            "KubeOS 1.0.1",
            "40"
        ]
    );

    let wide = ok(&kubectl(&k, &["get", "os", "-o", "wide"], b"").await);
    let wide: Vec<Vec<String>> = wide.lines().map(columns).collect();
    assert_eq!(
        wide[0],
        [
            "NAME",
            "VERSION",
            "OPS",
            "STATE",
            "TARGET",
            "UPDATED",
            "IN-PROGRESS",
            "FAILED",
            "MAX-UNAVAILABLE",
            "SYSCONFIG",
            "MESSAGE",
            "AGE"
        ]
    );
    assert_eq!(
        wide[1][..5],
        ["os-sample", "KubeOS 1.0.1", "upgrade", "2", "1.0.1"]
    );
}

/// An OS that breaks the CRD's schema: kubectl's own validation (against the server's
/// /openapi/v2) refuses it before sending; with `--validate=false` the server does, with
/// the real server's Invalid message; nothing is created either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_os_is_refused_with_the_schema_error() {
    for program in kubectls() {
        eprintln!("with {program}");
        an_invalid_os_is_refused_with_the_schema_error_with(&program).await;
    }
}

async fn an_invalid_os_is_refused_with_the_schema_error_with(program: &str) {
    let server = FakeApiServer::start_without_crds().await;
    let k = std::sync::Arc::new(Kubectl::new(&server, program));
    ok(&kubectl(&k, &["apply", "-f", "-"], &rendered(&k.program)).await);
    let bad = br#"
apiVersion: upgrade.openeuler.org/v1alpha1
kind: OS
metadata: {name: bad, namespace: os-upgrade-system}
spec:
  osversion: v2
  opstype: reboot
  maxunavailable: 1
  failureBudget: two
"#;
    let client_side = kubectl(&k, &["apply", "-f", "-"], bad).await;
    let (_, err) = text(&client_side);
    assert!(!client_side.status.success());
    assert!(
        err.contains("ValidationError(OS.spec.failureBudget): invalid type"),
        "{err}"
    );
    let server_side = kubectl(&k, &["apply", "--validate=false", "-f", "-"], bad).await;
    let (_, err) = text(&server_side);
    assert!(!server_side.status.success());
    assert!(err.contains(r#"The OS "bad" is invalid"#), "{err}");
    assert!(
        err.contains(r#"spec.failureBudget: Invalid value: "string": spec.failureBudget in body must be of type integer: "string""#),
        "{err}"
    );
    assert!(
        err.contains(r#"spec.opstype: Unsupported value: "reboot": supported values: "upgrade", "config", "rollback""#),
        "{err}"
    );
    let os: Api<Os> = Api::namespaced(server.client(), NS);
    assert!(os.get_opt("bad").await.unwrap().is_none());
}

/// `kubectl apply -k deploy/` (kubectl's built-in kustomize) creates the same objects as
/// `kubectl kustomize deploy/ | kubectl apply -f -`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_k_creates_what_kustomize_renders() {
    for program in kubectls() {
        eprintln!("with {program}");
        apply_k_creates_what_kustomize_renders_with(&program).await;
    }
}

async fn apply_k_creates_what_kustomize_renders_with(program: &str) {
    let server = FakeApiServer::start_without_crds().await;
    let k = std::sync::Arc::new(Kubectl::new(&server, program));
    let dir = deploy_dir();
    let out = ok(&kubectl(&k, &["apply", "-k", dir.to_str().unwrap()], b"").await);
    let mut created: Vec<&str> = out
        .lines()
        .map(|l| l.trim_end_matches(" created"))
        .collect();
    created.sort();
    let fresh = FakeApiServer::start_without_crds().await;
    let k2 = std::sync::Arc::new(Kubectl::new(&fresh, program));
    let piped = ok(&kubectl(&k2, &["apply", "-f", "-"], &rendered(&k2.program)).await);
    let mut expected: Vec<&str> = piped
        .lines()
        .map(|l| l.trim_end_matches(" created"))
        .collect();
    expected.sort();
    assert_eq!(created, expected);
    assert_eq!(created.len(), deploy_objects(), "{out}");
}

/// How many objects the kustomization's files hold (every non-empty YAML document).
fn deploy_objects() -> usize {
    use serde::Deserialize;
    ["crds.yaml", "operator.yaml", "admission.yaml", "proxy.yaml"]
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .map(|doc| serde_json::Value::deserialize(doc).unwrap())
                .filter(|doc| !doc.is_null())
                .count()
        })
        .sum()
}
