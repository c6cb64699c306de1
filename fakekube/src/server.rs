//! The HTTP side: one hyper service that routes a request, counts it, applies injected faults
//! and turns the store's answers into responses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};

use crate::eviction;
use crate::graceful;
use crate::list;
use crate::patch::{self, PatchType};
use crate::rbac::UserInfo;
use crate::registry;
use crate::route::{self, Target};
use crate::status::{success_status, ApiError};
use crate::store::{Part, Store};
use crate::table;
use crate::watch::{self, WatchRequest};
use crate::Shared;
use crate::{admission, discovery, openapi};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves one request; every failure becomes a `Status` response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match route_request(&shared, req).await {
        Ok(response) => response,
        Err(err) => json_response(err.code, &err.to_status()),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "fakekube request");
    Ok(response)
}

async fn route_request(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header(hyper::header::ACCEPT);
    let authorization = header(hyper::header::AUTHORIZATION);
    let user =
        shared.authenticate((!authorization.is_empty()).then_some(authorization.as_str()))?;
    if let Some(response) = non_resource(
        shared,
        req.uri().path(),
        &accept,
        &header(hyper::header::HOST),
    ) {
        return response;
    }
    let target = route::parse_path(req.uri().path(), &shared.lock_store())?;
    let query = route::parse_query(req.uri().query());
    let verb = route::verb(req.method(), &target, &query);
    shared.count(verb);
    if let Some(user) = &user {
        shared.authorize(user, verb, &target)?;
    }
    if let Some(status) = shared.take_fault(verb, &target) {
        return Err(ApiError::new(
            status,
            format!("injected fault for {verb} {}", target.rt.plural),
        ));
    }
    let method = req.method().clone();
    let request = Call::read(req, target, query).await?;
    match verb {
        "watch" => {
            let watch = WatchRequest::parse(&request.target, &request.query)?;
            Ok(stream_response(watch::stream(Arc::clone(shared), watch)))
        }
        "get" => {
            let store = shared.lock_store();
            let name = request.name()?;
            let obj = store
                .get(request.target.rt, request.target.ns(), name)
                .ok_or_else(|| ApiError::not_found(request.target.rt, name))?;
            if table::wanted(&accept) {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                let t = request.table(&store, std::slice::from_ref(obj), meta);
                return Ok(json_response(200, &t));
            }
            Ok(json_response(200, obj))
        }
        "list" => {
            let store = shared.lock_store();
            let list = list::list(&store, &request.target, &request.query)?;
            if table::wanted(&accept) {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let t = request.table(&store, &items, list["metadata"].clone());
                return Ok(json_response(200, &t));
            }
            Ok(json_response(200, &list))
        }
        _ => {
            let user = user.unwrap_or_else(UserInfo::admin);
            let (code, value) =
                shared.mutate(|store| request.write(store, &method, verb, &user))?;
            Ok(json_response(code, &value))
        }
    }
}

/// A routed request with its body read.
struct Call {
    target: Target,
    query: HashMap<String, String>,
    body: Bytes,
    content_type: String,
}

impl Call {
    async fn read(
        req: Request<Incoming>,
        target: Target,
        query: HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
            .to_bytes();
        Ok(Call {
            target,
            query,
            body,
            content_type,
        })
    }

    fn table(&self, store: &Store, objects: &[Value], meta: Value) -> Value {
        let include = self
            .query
            .get("includeObject")
            .map_or("Metadata", String::as_str);
        let now = jiff::Timestamp::now();
        table::table(store, self.target.rt, objects, meta, include, now)
    }

    fn name(&self) -> Result<&str, ApiError> {
        self.target.name.as_deref().ok_or_else(|| {
            ApiError::new(
                405,
                "the server does not allow this method on the requested resource",
            )
        })
    }

    fn part(&self) -> Part {
        match self.target.subresource.as_deref() {
            Some("status") => Part::Status,
            _ => Part::Main,
        }
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
    }

    /// Admission of one write by `user`: `object` after it, `old` before it.
    fn admit(
        &self,
        bound: &[admission::Bound],
        user: &UserInfo,
        operation: &'static str,
        object: &Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        let name = match &self.target.name {
            Some(n) => n.as_str(),
            None => object["metadata"]["name"].as_str().unwrap_or_default(),
        };
        let req = admission::Request {
            user,
            operation,
            rt: self.target.rt,
            subresource: self.target.subresource.as_deref(),
            namespace: self.target.ns(),
            name,
        };
        admission::admit(bound, &req, object, old)
    }

    fn write(
        &self,
        store: &mut Store,
        method: &Method,
        verb: &str,
        user: &UserInfo,
    ) -> Result<(u16, Value), ApiError> {
        let rt = self.target.rt;
        let bound = admission::bound(store);
        match verb {
            "create" => {
                if self.target.name.is_some() || (rt.namespaced && self.target.namespace.is_none())
                {
                    return Err(ApiError::new(405, format!("{method} is not allowed here")));
                }
                let body = self.json_body()?;
                if rt.namespaced && graceful::namespace_terminating(store, self.target.ns()) {
                    let name = body["metadata"]["name"].as_str().unwrap_or("");
                    return Err(graceful::namespace_terminating_error(
                        rt,
                        name,
                        self.target.ns(),
                    ));
                }
                self.admit(&bound, user, "CREATE", &body, &Value::Null)?;
                Ok((201, store.create(rt, self.target.ns(), body)?))
            }
            "update" => {
                let body = self.json_body()?;
                let value = store.update(
                    rt,
                    self.target.ns(),
                    self.name()?,
                    self.part(),
                    "update",
                    |old| {
                        self.admit(&bound, user, "UPDATE", &body, old)?;
                        Ok(body)
                    },
                )?;
                Ok((200, value))
            }
            "patch" => self.patch(store, &bound, user),
            "delete" => {
                let mut options = if self.body.is_empty() {
                    json!({})
                } else {
                    self.json_body()?
                };
                // `?gracePeriodSeconds=N` counts when the body does not say.
                if let Some(grace) = self.query.get("gracePeriodSeconds") {
                    if options["gracePeriodSeconds"].is_null() {
                        let grace: i64 = grace.parse().map_err(|_| {
                            ApiError::bad_request(format!("invalid gracePeriodSeconds {grace:?}"))
                        })?;
                        options["gracePeriodSeconds"] = json!(grace);
                    }
                }
                let (ns, name) = (self.target.ns(), self.name()?);
                if let Some(old) = store.get(rt, ns, name) {
                    self.admit(&bound, user, "DELETE", &Value::Null, old)?;
                }
                Ok((200, store.delete(rt, ns, name, &options)?))
            }
            "evict" => self.evict(store),
            _ => Err(ApiError::new(
                405,
                format!("{method} is not supported by fakekube"),
            )),
        }
    }

    fn patch(
        &self,
        store: &mut Store,
        bound: &[admission::Bound],
        user: &UserInfo,
    ) -> Result<(u16, Value), ApiError> {
        let (rt, ns, name) = (self.target.rt, self.target.ns(), self.name()?);
        let pt = PatchType::from_content_type(&self.content_type)?;
        let body = patch::decode(pt, &self.body)?;
        if pt == PatchType::Apply {
            if self.query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::new(
                    422,
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            if store.get(rt, ns, name).is_none() && self.part() == Part::Main {
                let mut obj = body;
                if obj["metadata"]["name"].is_null() {
                    obj["metadata"]["name"] = json!(name);
                }
                self.admit(bound, user, "CREATE", &obj, &Value::Null)?;
                return Ok((201, store.create(rt, ns, obj)?));
            }
        }
        let value = store.update(rt, ns, name, self.part(), "patch", |existing| {
            let patched = patch::apply(rt, name, pt, existing, &body)?;
            self.admit(bound, user, "UPDATE", &patched, existing)?;
            Ok(patched)
        })?;
        Ok((200, value))
    }

    fn evict(&self, store: &mut Store) -> Result<(u16, Value), ApiError> {
        let (rt, ns, name) = (self.target.rt, self.target.ns(), self.name()?);
        let eviction = self.json_body()?;
        if let Some(body_name) = eviction["metadata"]["name"].as_str().filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {body_name} != {name}"
            )));
        }
        // NamespaceLifecycle admission comes before the eviction itself.
        if graceful::namespace_terminating(store, ns) {
            return Err(graceful::namespace_terminating_error(rt, name, ns));
        }
        let pod = store
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if !eviction::ignores_budgets(&pod) {
            spend_budget(store, ns, &pod)?;
        }
        store.delete(rt, ns, name, &eviction["deleteOptions"])?;
        store.log_eviction(rt, ns, &pod);
        Ok((201, success_status(201)))
    }
}

/// Refuses the eviction unless the pod's budget allows it, and records the disruption in the
/// budget's status (the real eviction's `checkAndDecrement`).
fn spend_budget(store: &mut Store, ns: &str, pod: &Value) -> Result<(), ApiError> {
    let Some(pdbs) = registry::find("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let matching: Vec<Value> = store
        .list(pdbs, Some(ns))
        .map(|(_, pdb)| pdb)
        .filter(|pdb| eviction::selects(pdb, pod))
        .cloned()
        .collect();
    if matching.len() > 1 {
        return Err(eviction::too_many_budgets());
    }
    let Some(pdb) = matching.first() else {
        return Ok(());
    };
    let status =
        eviction::check_and_decrement(pdb, pod["metadata"]["name"].as_str().unwrap_or(""))?;
    let name = pdb["metadata"]["name"].as_str().unwrap_or("");
    store.update(pdbs, ns, name, Part::Status, "update", |p| {
        let mut p = p.clone();
        p["status"] = status;
        Ok(p)
    })?;
    Ok(())
}

/// Discovery and the OpenAPI document; `None` for a resource path.
fn non_resource(
    shared: &Shared,
    path: &str,
    accept: &str,
    host: &str,
) -> Option<Result<Response<Body>, ApiError>> {
    if path.trim_end_matches('/') == "/openapi/v2" {
        let doc = openapi::document(&shared.lock_store());
        if accept.contains(openapi::PROTOBUF) {
            let body = Full::new(Bytes::from(openapi::protobuf(&doc))).boxed_unsync();
            let mut r = response(200, body);
            // What kube-openapi's handler answers: Go's mime parser (and so client-go)
            // refuses the `@` of the media type that the Accept header names.
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            return Some(Ok(r));
        }
        return Some(Ok(json_response(200, &doc)));
    }
    let doc = discovery::serve(&shared.lock_store(), path, host)?;
    Some(doc.map(|d| json_response(200, &d)))
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default()));
    response(code, body.boxed_unsync())
}

fn stream_response(
    events: impl futures::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>> + Send + 'static,
) -> Response<Body> {
    response(200, StreamBody::new(events).boxed_unsync())
}

fn response(code: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
