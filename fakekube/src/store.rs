//! The object store: one global resourceVersion, the objects by resource, the watch history and
//! the mutation log. Every write goes through [`Store::commit`], which is where the real
//! server's invariants (resourceVersion bump, no-op suppression, generation) live.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::controllers::Sim;
use crate::crd::{self, Crds};
use crate::field;
use crate::graceful;
use crate::registry::ResourceType;
use crate::schema;
use crate::status::ApiError;
use crate::validate;
use crate::LogEntry;

/// How many changes a watch can be behind and still resume (the real server keeps a window
/// of etcd history; older resourceVersions get 410 Expired).
pub(crate) const HISTORY_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One entry of the watch history: the object before and after a write.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub rt: &'static ResourceType,
    pub kind: ChangeKind,
    pub old: Option<Value>,
    /// The object after the write; for a delete, the last state with the deletion's
    /// resourceVersion, as the real server sends it.
    pub new: Value,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// `(namespace or "", name)`: sorts like the real server's etcd keys.
pub(crate) type Key = (String, String);

pub(crate) struct Store {
    rv: u64,
    objects: HashMap<(&'static str, &'static str), BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is still in `history`.
    floor: u64,
    log: Vec<LogEntry>,
    uid_counter: u64,
    random: u64,
    /// Every uid this server handed out: an owner reference to one of them whose object is
    /// gone names an absent owner (see the garbage collector in `controllers`).
    issued_uids: HashSet<String>,
    /// The simulated controllers and kubelet: their settings and timers.
    pub(crate) sim: Sim,
    /// Something was deleted (or created with owners) since the garbage collector last ran.
    pub(crate) gc_due: bool,
    /// What of each object the log keeps (see `FakeApiServer::project_log`).
    pub(crate) log_projection: Option<crate::LogProjection>,
    /// What the stored CustomResourceDefinitions serve.
    pub(crate) crds: Crds,
}

impl Store {
    pub fn new(seed: u64) -> Self {
        Store {
            rv: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            floor: 1,
            log: Vec::new(),
            uid_counter: 0,
            random: seed | 1,
            issued_uids: HashSet::new(),
            sim: Sim::default(),
            gc_due: false,
            log_projection: None,
            crds: Crds::default(),
        }
    }

    /// The served resource type at `/apis/{group}/{version}/{plural}`: a built-in one, or one a
    /// stored CRD defines.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        crate::registry::find(group, version, plural)
            .or_else(|| self.crds.find(group, version, plural).map(|s| s.rt))
    }

    /// Every served resource type: built-ins first, then those of CRDs.
    pub fn served(&self) -> impl Iterator<Item = &'static ResourceType> + '_ {
        crate::registry::RESOURCES
            .iter()
            .chain(self.crds.iter().map(|s| s.rt))
    }

    /// Forgets the mutation log: what was written before the test's server was handed over.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// CRD validation for a CRD, pruning, defaulting and schema validation for a custom
    /// resource; nothing for other built-ins.
    fn admit(&self, rt: &ResourceType, name: &str, obj: &mut Value) -> Result<(), ApiError> {
        let errors = if crd::is_crd_type(rt) {
            crd::validate(obj)
        } else {
            match self.crds.of(rt) {
                Some(served) if served.schema.is_object() => schema::admit(&served.schema, obj),
                _ => Vec::new(),
            }
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(field::invalid(rt, name, &errors))
        }
    }

    /// After a CRD changed: serve what the stored CRDs define now; a removed CRD's objects go
    /// with it.
    fn crds_changed(&mut self, rt: &'static ResourceType, removed: Option<&Value>) {
        if !crd::is_crd_type(rt) {
            return;
        }
        if let Some(gone) = removed {
            let group = gone["spec"]["group"].as_str().unwrap_or_default();
            let plural = gone["spec"]["names"]["plural"].as_str().unwrap_or_default();
            self.objects
                .retain(|(g, p), _| !(*g == group && *p == plural));
        }
        let crds: Vec<Value> = self
            .objects
            .get(&table(rt))
            .into_iter()
            .flatten()
            .map(|(_, v)| v.clone())
            .collect();
        self.crds = Crds::from_objects(crds.iter());
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// Forgets the watch history, as an etcd compaction does.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    /// Changes after `rv`, oldest first.
    pub fn changes_after(&self, rv: u64) -> impl Iterator<Item = &Arc<Change>> {
        let start = self.history.partition_point(|c| c.rv <= rv);
        self.history.range(start..)
    }

    pub fn get(&self, rt: &'static ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&table(rt))?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a type in key order, in one namespace or (None) all of them.
    pub fn list<'a>(
        &'a self,
        rt: &'static ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects
            .get(&table(rt))
            .into_iter()
            .flatten()
            .filter(move |((obj_ns, _), _)| ns.is_none_or(|ns| ns == obj_ns))
    }

    pub fn create(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut obj = prepare_create(rt, ns, body)?;
        graceful::on_create(rt, &mut obj);
        if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
            let prefix = obj["metadata"]["generateName"]
                .as_str()
                .unwrap_or("")
                .to_string();
            obj["metadata"]["name"] = json!(format!("{prefix}{}", self.random_suffix()));
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        // `rest.BeforeCreate` validates before the storage finds the name taken: an invalid
        // object is 422 even when its name exists.
        self.admit(rt, &name, &mut obj)?;
        validate::object(rt, &name, &obj)?;
        if self.get(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        self.uid_counter += 1;
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            self.random as u32, self.uid_counter
        );
        self.issued_uids.insert(uid.clone());
        self.gc_due |= obj["metadata"]["ownerReferences"].is_array();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_timestamp());
        meta["generation"] = json!(1);
        Ok(self.commit(rt, ns, None, obj, "create"))
    }

    /// Replaces (PUT) or patches an object: `mutate` turns the current object into the
    /// candidate, then the status-subresource and server-field rules apply.
    pub fn update(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        part: Part,
        verb: &'static str,
        mutate: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let existing = self
            .get(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?
            .clone();
        let candidate = mutate(&existing)?;
        check_identity(rt, ns, name, &existing, &candidate)?;
        let mut merged = merge_update(rt, part, &existing, candidate);
        self.admit(rt, name, &mut merged)?;
        if merged == existing {
            // The real server skips writes that change nothing: no new resourceVersion, no event.
            return Ok(existing);
        }
        validate::object(rt, name, &merged)?;
        // Gone once terminating with no finalizers left and no grace period running (a pod's
        // kubelet ends its grace period with a delete of grace 0).
        if graceful::can_remove(&merged) {
            return Ok(self.remove(rt, ns, name, merged));
        }
        self.gc_due |=
            merged["metadata"]["ownerReferences"] != existing["metadata"]["ownerReferences"];
        Ok(self.commit(rt, ns, Some(existing), merged, verb))
    }

    /// Deletes an object as the real registry does (`rest.BeforeDelete`): preconditions, then
    /// a namespace only starts terminating, a pod gets its grace period (`deletionTimestamp` in
    /// the future, removed by its kubelet), and finalizers keep any object until removed.
    /// `options` is the `DeleteOptions` body (`preconditions`, `gracePeriodSeconds`).
    pub fn delete(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let existing = self
            .get(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?
            .clone();
        for field in ["uid", "resourceVersion"] {
            let wanted = &options["preconditions"][field];
            if !wanted.is_null() && *wanted != existing["metadata"][field] {
                return Err(ApiError::conflict(rt, name));
            }
        }
        let now = Instant::now();
        let marked = match graceful::on_delete(rt, &existing, options, now, &mut self.sim) {
            graceful::Deletion::Remove => return Ok(self.remove(rt, ns, name, existing)),
            graceful::Deletion::Unchanged => return Ok(existing),
            graceful::Deletion::Mark(marked) => marked,
        };
        Ok(self.commit(rt, ns, Some(existing), marked, "update"))
    }

    /// Records an eviction in the log (the pod's deletion is logged separately).
    pub fn log_eviction(&mut self, rt: &ResourceType, ns: &str, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let entry = self.log_entry("evict", rt, ns, name, pod.clone());
        self.log.push(entry);
    }

    fn remove(&mut self, rt: &'static ResourceType, ns: &str, name: &str, last: Value) -> Value {
        self.rv += 1;
        self.gc_due = true;
        if let Some(uid) = last["metadata"]["uid"].as_str() {
            self.sim.forget(uid);
        }
        let key = (ns.to_string(), name.to_string());
        let old = self.objects.entry(table(rt)).or_default().remove(&key);
        self.crds_changed(rt, Some(&last));
        let mut gone = last.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(rt, ChangeKind::Deleted, old, gone.clone());
        let entry = self.log_entry("delete", rt, ns, name.to_string(), last);
        self.log.push(entry);
        gone
    }

    fn commit(
        &mut self,
        rt: &'static ResourceType,
        ns: &str,
        old: Option<Value>,
        mut obj: Value,
        verb: &'static str,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.objects
            .entry(table(rt))
            .or_default()
            .insert((ns.to_string(), name.clone()), obj.clone());
        self.crds_changed(rt, None);
        self.record(rt, kind, old, obj.clone());
        let entry = self.log_entry(verb, rt, ns, name, obj.clone());
        self.log.push(entry);
        obj
    }

    fn record(
        &mut self,
        rt: &'static ResourceType,
        kind: ChangeKind,
        old: Option<Value>,
        new: Value,
    ) {
        let rv = self.rv;
        self.history.push_back(Arc::new(Change {
            rv,
            rt,
            kind,
            old,
            new,
        }));
        if self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
    }

    fn log_entry(
        &self,
        verb: &'static str,
        rt: &ResourceType,
        ns: &str,
        name: String,
        object: Value,
    ) -> LogEntry {
        LogEntry {
            seq: self.log.len() as u64 + 1,
            resource_version: self.rv,
            at: Instant::now(),
            verb,
            resource: rt.plural.to_string(),
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name,
            object: match self.log_projection {
                Some(project) => project(rt.plural, &object),
                None => object,
            },
        }
    }

    /// Five characters from apimachinery's `SimpleNameGenerator` alphabet.
    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| {
                // xorshift64: enough spread for unique names in tests.
                self.random ^= self.random << 13;
                self.random ^= self.random >> 7;
                self.random ^= self.random << 17;
                ALPHABET[(self.random % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }
}

/// Core and `events.k8s.io` events are stored apart (see README).
fn table(rt: &'static ResourceType) -> (&'static str, &'static str) {
    (rt.group, rt.plural)
}

pub(crate) fn finalizers(obj: &Value) -> Vec<Value> {
    obj["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

impl Store {
    /// Whether `uid` was handed out by this server.
    pub(crate) fn issued(&self, uid: &str) -> bool {
        self.issued_uids.contains(uid)
    }

    /// Object types held, for the controllers that walk everything (garbage collector,
    /// namespace controller).
    pub(crate) fn types(&self) -> Vec<&'static ResourceType> {
        self.served()
            .filter(|rt| self.objects.get(&table(rt)).is_some_and(|t| !t.is_empty()))
            .collect()
    }
}

pub(crate) fn now_timestamp() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Checks a create body and fills in what the URL decides: kind, apiVersion, namespace.
fn prepare_create(rt: &ResourceType, ns: &str, body: Value) -> Result<Value, ApiError> {
    let mut obj = body;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    check_kind(rt, &obj)?;
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("").to_string();
    if name.is_empty() && meta["generateName"].as_str().unwrap_or("").is_empty() {
        return Err(ApiError::invalid(
            rt,
            "",
            "metadata.name: Required value: name or generateName is required",
        ));
    }
    set_namespace(rt, ns, meta)?;
    for field in [
        "resourceVersion",
        "uid",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(field);
        }
    }
    // Nodes may carry status on create; pods, PDBs and custom resources with a status
    // subresource get it reset (the real pod strategy sets phase Pending instead: see README).
    if rt.status_subresource && rt.kind != "Node" {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    Ok(obj)
}

fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    match obj["kind"].as_str() {
        Some(kind) if !kind.is_empty() && kind != rt.kind => Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the object does not match the resource {}",
            rt.qualified()
        ))),
        _ => Ok(()),
    }
}

fn set_namespace(rt: &ResourceType, ns: &str, meta: &mut Value) -> Result<(), ApiError> {
    if !rt.namespaced {
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        return Ok(());
    }
    match meta["namespace"].as_str() {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta["namespace"] = json!(ns);
            Ok(())
        }
    }
}

/// Optimistic concurrency and URL/body agreement for an update candidate.
fn check_identity(
    rt: &ResourceType,
    ns: &str,
    name: &str,
    existing: &Value,
    candidate: &Value,
) -> Result<(), ApiError> {
    if !candidate.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    check_kind(rt, candidate)?;
    let meta = &candidate["metadata"];
    match meta["resourceVersion"].as_str() {
        Some(rv)
            if !rv.is_empty() && Some(rv) != existing["metadata"]["resourceVersion"].as_str() =>
        {
            return Err(ApiError::conflict(rt, name));
        }
        _ => {}
    }
    if let Some(body_name) = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty() && *n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if rt.namespaced
        && meta["namespace"]
            .as_str()
            .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The stored object after an update: status-subresource separation, server-owned metadata
/// kept, generation bumped when the spec (anything but metadata and status) changed.
fn merge_update(rt: &ResourceType, part: Part, existing: &Value, candidate: Value) -> Value {
    let mut merged = match (rt.status_subresource, part) {
        (true, Part::Main) => with_field(candidate, "status", existing.get("status")),
        (true, Part::Status) => with_field(existing.clone(), "status", candidate.get("status")),
        (false, _) => candidate,
    };
    merged["apiVersion"] = existing["apiVersion"].clone();
    merged["kind"] = existing["kind"].clone();
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match existing["metadata"].get(field) {
            Some(v) => merged["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = merged["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    let spec_changed = |a: &Value, b: &Value| {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                if rt.status_subresource {
                    o.remove("status");
                }
            }
            v
        };
        strip(a) != strip(b)
    };
    if spec_changed(existing, &merged) {
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0);
        merged["metadata"]["generation"] = json!(generation + 1);
    }
    merged
}

fn with_field(mut obj: Value, field: &str, value: Option<&Value>) -> Value {
    if let Some(o) = obj.as_object_mut() {
        match value {
            Some(v) => {
                o.insert(field.to_string(), v.clone());
            }
            None => {
                o.remove(field);
            }
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn rt(plural: &str) -> &'static ResourceType {
        registry::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    fn osi(spec: Value) -> Value {
        json!({"metadata": {"name": "n1"}, "spec": spec, "status": {"phase": "Idle"}})
    }

    #[test]
    fn generation_follows_spec_changes_only() {
        let osis = rt("deployments");
        let mut store = Store::new(7);
        let created = store.create(osis, "d", osi(json!({"a": 1}))).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        assert!(created.get("status").is_none());
        let put = |v: Value| move |_: &Value| Ok(v);
        let labelled = json!({"metadata": {"name": "n1", "labels": {"x": "y"}}, "spec": {"a": 1}});
        let out = store
            .update(osis, "d", "n1", Part::Main, "update", put(labelled))
            .unwrap();
        assert_eq!(out["metadata"]["generation"], 1);
        let out = store
            .update(
                osis,
                "d",
                "n1",
                Part::Status,
                "update",
                put(osi(json!({"a": 2}))),
            )
            .unwrap();
        assert_eq!(
            (
                out["metadata"]["generation"].clone(),
                out["spec"]["a"].clone()
            ),
            (json!(1), json!(1))
        );
        let out = store
            .update(
                osis,
                "d",
                "n1",
                Part::Main,
                "update",
                put(osi(json!({"a": 2}))),
            )
            .unwrap();
        assert_eq!(out["metadata"]["generation"], 2);
        assert_eq!(
            out["metadata"]["labels"],
            Value::Null,
            "PUT replaces labels"
        );
    }

    #[test]
    fn no_op_updates_do_not_bump_the_resource_version() {
        let leases = rt("leases");
        let mut store = Store::new(7);
        let created = store
            .create(leases, "d", json!({"metadata": {"name": "l"}, "spec": {}}))
            .unwrap();
        let rv = store.resource_version();
        let same = created.clone();
        let out = store
            .update(leases, "d", "l", Part::Main, "update", |_| Ok(same))
            .unwrap();
        assert_eq!(out, created);
        assert_eq!(store.resource_version(), rv);
        assert_eq!(store.log().len(), 1);
        assert_eq!(store.changes_after(rv).count(), 0);
    }

    #[test]
    fn stale_resource_versions_conflict() {
        let leases = rt("leases");
        let mut store = Store::new(7);
        let mut stale = store
            .create(leases, "d", json!({"metadata": {"name": "l"}}))
            .unwrap();
        store
            .update(leases, "d", "l", Part::Main, "patch", |v| {
                Ok(json!({"spec": {"x": 1}, "metadata": v["metadata"]}))
            })
            .unwrap();
        stale["spec"] = json!({"x": 2});
        let err = store
            .update(leases, "d", "l", Part::Main, "update", |_| Ok(stale))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn history_is_bounded_and_moves_the_floor() {
        let leases = rt("leases");
        let mut store = Store::new(7);
        for i in 0..HISTORY_LIMIT + 5 {
            store
                .create(leases, "d", json!({"metadata": {"name": format!("l{i}")}}))
                .unwrap();
        }
        assert_eq!(store.changes_after(0).count(), HISTORY_LIMIT);
        assert_eq!(store.floor(), 1 + 5);
        store.compact();
        assert_eq!(store.floor(), store.resource_version());
    }

    #[test]
    fn deletes_record_the_deletion_resource_version() {
        let pods = rt("pods");
        let mut store = Store::new(7);
        store
            .create(
                pods,
                "d",
                json!({"metadata": {"name": "p", "namespace": "d"}}),
            )
            .unwrap();
        let err = store
            .delete(pods, "d", "p", &json!({"preconditions": {"uid": "other"}}))
            .unwrap_err();
        assert_eq!(err.code, 409);
        let gone = store.delete(pods, "d", "p", &Value::Null).unwrap();
        assert_eq!(
            gone["metadata"]["resourceVersion"],
            store.resource_version().to_string()
        );
        let last = store.changes_after(0).last().unwrap();
        assert_eq!(last.kind, ChangeKind::Deleted);
        assert!(store.get(pods, "d", "p").is_none());
    }
}
