//! An in-memory Kubernetes API under a real `kube::Client`: a `tower::Service` that answers
//! exactly the requests the controller makes (GET/LIST EcsInstances, JSON patches of the
//! finalizers, merge and JSON patches of /status, GET Namespace and CRD, POST and merge
//! PATCH of events.k8s.io/v1 Events), with the API server rules they depend on:
//! resourceVersion and generation, the resourceVersion precondition (409), `test` ops
//! (422), no new finalizer on an object being deleted, /status ignoring everything but
//! status, and an object with a deletionTimestamp and no finalizers being removed.
//! Everything else answers 404. Objects are kept as JSON, so patches apply as on a server.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use crate::api::{EcsInstance, EcsInstanceSpec, CRD_NAME};

const GROUP: &str = "ecs.volcengine.io";
const VERSION: &str = "v1alpha1";

#[derive(Debug, Default)]
pub struct KubeState {
    rv: u64,
    uids: u64,
    /// EcsInstances by (namespace, name).
    pub instances: BTreeMap<(String, String), Value>,
    pub namespaces: BTreeMap<String, Value>,
    /// EcsAccounts by name (GET only).
    pub accounts: BTreeMap<String, Value>,
    pub crd: Option<Value>,
    /// Namespace GETs answered with this HTTP status instead (403, 500, ...).
    pub namespace_faults: BTreeMap<String, u16>,
    /// Cluster-wide EcsInstance LISTs answered with an error instead.
    pub list_fault: Option<ListFault>,
    pub events: BTreeSet<(String, String)>,
    /// `METHOD path` of every request, in order.
    pub requests: Vec<String>,
}

/// Which cluster-wide EcsInstance LISTs fail, and with which HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFault {
    Every(u16),
    /// Only the pages after the first (requests carrying a `continue` token).
    LaterPages(u16),
}

/// The store and its service. Clones share the store.
#[derive(Clone, Default)]
pub struct FakeKube {
    state: Arc<Mutex<KubeState>>,
    /// How requests arrive: how many at once, how slowly answered, Events held back.
    pub traffic: Arc<Traffic>,
}

/// Request timing of a `FakeKube`, for tests of the client's cap and the Event backlog.
#[derive(Debug)]
pub struct Traffic {
    now: AtomicUsize,
    max: AtomicUsize,
    delay_ms: AtomicU64,
    events_held: tokio::sync::watch::Sender<bool>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            events_held: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Traffic {
    /// Every answer waits this long.
    pub fn set_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// While held, Event writes (POST and PATCH) get no answer.
    pub fn hold_events(&self, held: bool) {
        self.events_held.send_replace(held);
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    async fn pass(&self, event: bool) -> InFlight<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        let guard = InFlight(&self.now);
        let ms = self.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if event {
            let mut rx = self.events_held.subscribe();
            // Err: the sender is gone with the FakeKube, nothing to wait for.
            let _ = rx.wait_for(|held| !held).await;
        }
        guard
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now() -> Value {
    json!(super::clock::now_or_system().to_string())
}

impl KubeState {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// The API server's garbage rule: deleting and no finalizers left means gone. A
    /// namespace being deleted goes once it holds nothing.
    fn settle(&mut self) {
        self.instances.retain(|_, o| {
            let deleting = !o["metadata"]["deletionTimestamp"].is_null();
            let finalizers = o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            !deleting || finalizers
        });
        let used: BTreeSet<String> = self.instances.keys().map(|(ns, _)| ns.clone()).collect();
        self.namespaces
            .retain(|name, n| n["metadata"]["deletionTimestamp"].is_null() || used.contains(name));
    }
}

impl FakeKube {
    /// An empty cluster with the EcsInstance CRD installed.
    pub fn new() -> Self {
        let kube = Self::default();
        kube.state().crd = Some(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD_NAME, "uid": "crd-uid", "resourceVersion": "1"},
            "spec": {"group": GROUP, "names": {"plural": "ecsinstances", "kind": "EcsInstance"},
                     "scope": "Namespaced", "versions": []}
        }));
        kube
    }

    pub fn state(&self) -> MutexGuard<'_, KubeState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A `kube::Client` talking to this store.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.service(), "default")
    }

    /// The store as a tower service, for a client stack of a test's own.
    pub fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
           + Send
           + 'static {
        let kube = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let kube = kube.clone();
            async move {
                let traffic = kube.traffic.clone();
                let event = req.uri().path().starts_with("/apis/events.k8s.io/");
                let _in_flight = traffic.pass(event).await;
                Ok::<_, Infallible>(kube.handle(req).await)
            }
        })
    }

    pub fn create_namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let mut st = self.state();
        let rv = st.next_rv();
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        st.namespaces.insert(
            name.to_string(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "uid": format!("ns-{name}"), "resourceVersion": rv, "annotations": ann}}),
        );
    }

    /// An EcsAccount (only read by GET here; its spec is not used by the operator's reads).
    pub fn create_account(&self, name: &str) {
        let mut st = self.state();
        let rv = st.next_rv();
        st.accounts.insert(
            name.to_string(),
            json!({"apiVersion": "ecs.volcengine.io/v1alpha1", "kind": "EcsAccount",
                   "metadata": {"name": name, "uid": format!("acct-{name}"), "resourceVersion": rv},
                   "spec": {"secretRef": {"name": name}}}),
        );
    }

    /// Sets (`Some`) or removes (`None`) an annotation of a namespace.
    pub fn annotate_namespace(&self, name: &str, key: &str, value: Option<&str>) {
        let mut st = self.state();
        let rv = st.next_rv();
        if let Some(n) = st.namespaces.get_mut(name) {
            set_annotation(n, key, value);
            n["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    /// `kubectl delete namespace`: the namespace and everything in it get a deletionTimestamp.
    pub fn delete_namespace(&self, name: &str) {
        let mut st = self.state();
        let Some(n) = st.namespaces.get_mut(name) else {
            return;
        };
        if n["metadata"]["deletionTimestamp"].is_null() {
            n["metadata"]["deletionTimestamp"] = now();
        }
        let keys: Vec<_> = st
            .instances
            .keys()
            .filter(|(ns, _)| ns == name)
            .cloned()
            .collect();
        for k in keys {
            mark_deleted(&mut st, &k);
        }
        st.settle();
    }

    pub fn namespace_terminating(&self, name: &str) -> bool {
        self.state()
            .namespaces
            .get(name)
            .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null())
    }

    /// Creates an EcsInstance; `None` if the namespace is missing or terminating (the API
    /// server refuses new content there) or the name is taken.
    pub fn create_instance(&self, ns: &str, name: &str, spec: EcsInstanceSpec) -> Option<String> {
        let mut st = self.state();
        let usable = st
            .namespaces
            .get(ns)
            .is_some_and(|n| n["metadata"]["deletionTimestamp"].is_null());
        let key = (ns.to_string(), name.to_string());
        if !usable || st.instances.contains_key(&key) {
            return None;
        }
        st.uids += 1;
        let uid = format!("00000000-0000-4000-8000-{:012}", st.uids);
        let rv = st.next_rv();
        let mut o = serde_json::to_value(EcsInstance::new(name, spec)).ok()?;
        o["metadata"] = json!({"name": name, "namespace": ns, "uid": uid,
            "resourceVersion": rv, "generation": 1, "creationTimestamp": now()});
        st.instances.insert(key, o);
        Some(uid)
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<EcsInstance> {
        let st = self.state();
        let o = st.instances.get(&(ns.to_string(), name.to_string()))?;
        serde_json::from_value(o.clone()).ok()
    }

    pub fn list(&self) -> Vec<EcsInstance> {
        let st = self.state();
        st.instances
            .values()
            .filter_map(|o| serde_json::from_value(o.clone()).ok())
            .collect()
    }

    /// Edits an EcsInstance as a user would (the spec, or annotations), recording the
    /// edit in managedFields the way the API server does for the fields it sets.
    pub fn edit(&self, ns: &str, name: &str, f: impl FnOnce(&mut EcsInstance)) -> bool {
        let mut st = self.state();
        let key = (ns.to_string(), name.to_string());
        let Some(o) = st.instances.get(&key) else {
            return false;
        };
        let Ok(mut obj) = serde_json::from_value::<EcsInstance>(o.clone()) else {
            return false;
        };
        let before_ann = obj.metadata.annotations.clone().unwrap_or_default();
        f(&mut obj);
        let after_ann = obj.metadata.annotations.clone().unwrap_or_default();
        let Ok(mut new) = serde_json::to_value(&obj) else {
            return false;
        };
        // The user edits the object, never its status (a separate subresource).
        new["status"] = o["status"].clone();
        let mut managed = o["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (k, v) in &after_ann {
            if before_ann.get(k) != Some(v) {
                managed.retain(|m| {
                    m["fieldsV1"]["f:metadata"]["f:annotations"][format!("f:{k}")].is_null()
                });
                managed.push(json!({"manager": "kubectl-annotate", "operation": "Update",
                    "apiVersion": format!("{GROUP}/{VERSION}"), "time": now(), "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": {format!("f:{k}"): {}}}}}));
            }
        }
        new["metadata"]["managedFields"] = json!(managed);
        let rv = st.next_rv();
        commit(&mut st, &key, new, rv);
        true
    }

    /// `kubectl delete`: a deletionTimestamp (removed at once without finalizers).
    pub fn delete_instance(&self, ns: &str, name: &str) {
        let mut st = self.state();
        mark_deleted(&mut st, &(ns.to_string(), name.to_string()));
        st.settle();
    }

    /// `kubectl patch --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]'`.
    pub fn remove_finalizers(&self, ns: &str, name: &str) {
        let mut st = self.state();
        let rv = st.next_rv();
        if let Some(o) = st.instances.get_mut(&(ns.to_string(), name.to_string())) {
            o["metadata"]["finalizers"] = Value::Null;
            o["metadata"]["resourceVersion"] = json!(rv);
        }
        st.settle();
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match body.collect_bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return status(400, "BadRequest", &e.to_string()),
        };
        let path = parts.uri.path().to_string();
        // Only `limit` and `continue` are read, and this store's tokens are digits: no
        // percent-decoding needed.
        let query = parts.uri.query().unwrap_or("").to_string();
        let param = |k: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut st = self.state();
        st.requests.push(format!("{} {path}", parts.method));
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            }
        };
        let m = &parts.method;
        match segs.as_slice() {
            ["apis", GROUP, VERSION, "ecsinstances"] if m == Method::GET => {
                let cont = param("continue").filter(|c| !c.is_empty());
                match st.list_fault {
                    Some(ListFault::Every(code)) => status(code, "InternalError", "list failed"),
                    Some(ListFault::LaterPages(code)) if cont.is_some() => {
                        status(code, "InternalError", "list failed")
                    }
                    _ => list_page(&st, param("limit"), cont),
                }
            }
            ["apis", GROUP, VERSION, "namespaces", ns, "ecsinstances"] if m == Method::GET => {
                list(&st, Some(ns))
            }
            ["apis", GROUP, VERSION, "namespaces", ns, "ecsinstances", name] => {
                let key = (ns.to_string(), name.to_string());
                match *m {
                    Method::GET => get(st.instances.get(&key), name),
                    Method::PATCH => patch_object(&mut st, &key, &content_type, &body, false),
                    _ => status(405, "MethodNotAllowed", "not used by the operator"),
                }
            }
            ["apis", GROUP, VERSION, "namespaces", ns, "ecsinstances", name, "status"]
                if m == Method::PATCH =>
            {
                let key = (ns.to_string(), name.to_string());
                patch_object(&mut st, &key, &content_type, &body, true)
            }
            ["api", "v1", "namespaces", name] if m == Method::GET => {
                if let Some(code) = st.namespace_faults.get(*name) {
                    return status(
                        *code,
                        "Fault",
                        &format!("namespaces {name:?}: injected {code}"),
                    );
                }
                get(st.namespaces.get(*name), name)
            }
            ["apis", GROUP, VERSION, "ecsaccounts", name] if m == Method::GET => {
                get(st.accounts.get(*name), name)
            }
            ["apis", "apiextensions.k8s.io", "v1", "customresourcedefinitions", name]
                if m == Method::GET && *name == CRD_NAME =>
            {
                get(st.crd.as_ref(), name)
            }
            ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"] if m == Method::POST => {
                if st
                    .namespaces
                    .get(*ns)
                    .is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null())
                {
                    let msg = format!("unable to create new content in namespace {ns} because it is being terminated");
                    return status(403, "Forbidden", &msg);
                }
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or("event")
                    .to_string();
                st.events.insert((ns.to_string(), name));
                respond(201, &body)
            }
            ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]
                if m == Method::PATCH =>
            {
                if !st.events.contains(&(ns.to_string(), name.to_string())) {
                    return status(404, "NotFound", &format!("events {name:?} not found"));
                }
                let mut ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": ns}, "eventTime": now()});
                json_patch::merge(&mut ev, &body);
                respond(200, &ev)
            }
            _ => status(
                404,
                "NotFound",
                &format!("{} {path} is not served", parts.method),
            ),
        }
    }
}

fn set_annotation(o: &mut Value, key: &str, value: Option<&str>) {
    if !o["metadata"]["annotations"].is_object() {
        o["metadata"]["annotations"] = json!({});
    }
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        match value {
            Some(v) => {
                a.insert(key.to_string(), json!(v));
            }
            None => {
                a.remove(key);
            }
        }
    }
}

fn mark_deleted(st: &mut KubeState, key: &(String, String)) {
    let rv = st.next_rv();
    if let Some(o) = st.instances.get_mut(key) {
        if o["metadata"]["deletionTimestamp"].is_null() {
            o["metadata"]["deletionTimestamp"] = now();
            o["metadata"]["resourceVersion"] = json!(rv);
        }
    }
}

/// Stores a new version (bumping generation when the spec changed) and applies the
/// garbage rule.
fn commit(st: &mut KubeState, key: &(String, String), mut new: Value, rv: String) {
    if let Some(old) = st.instances.get(key) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bump = i64::from(old["spec"] != new["spec"]);
        new["metadata"]["generation"] = json!(generation + bump);
    }
    new["metadata"]["resourceVersion"] = json!(rv);
    st.instances.insert(key.clone(), new);
    st.settle();
}

fn patch_object(
    st: &mut KubeState,
    key: &(String, String),
    content_type: &str,
    body: &Value,
    subresource: bool,
) -> Response<Body> {
    let Some(old) = st.instances.get(key).cloned() else {
        return status(
            404,
            "NotFound",
            &format!("ecsinstances {:?} not found", key.1),
        );
    };
    let mut new = old.clone();
    if content_type.starts_with("application/json-patch+json") {
        let patch: json_patch::Patch = match serde_json::from_value(body.clone()) {
            Ok(p) => p,
            Err(e) => return status(400, "BadRequest", &e.to_string()),
        };
        // The API server's JSON patch (evanphx/json-patch) tests a missing member as null.
        if new["metadata"].get("finalizers").is_none() {
            new["metadata"]["finalizers"] = Value::Null;
        }
        if let Err(e) = json_patch::patch(&mut new, &patch) {
            return status(
                422,
                "Invalid",
                &format!("the JSON patch does not apply: {e}"),
            );
        }
    } else if content_type.starts_with("application/merge-patch+json") {
        let want = &body["metadata"]["resourceVersion"];
        if !want.is_null() && *want != old["metadata"]["resourceVersion"] {
            return status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
        }
        json_patch::merge(&mut new, body);
    } else {
        return status(415, "UnsupportedMediaType", content_type);
    }
    if subresource {
        // /status changes the status only.
        let status_part = new["status"].take();
        new = old.clone();
        new["status"] = status_part;
    } else {
        new["status"] = old["status"].clone();
        let deleting = !old["metadata"]["deletionTimestamp"].is_null();
        let before = finalizers(&old);
        if deleting && finalizers(&new).iter().any(|f| !before.contains(f)) {
            return status(422, "Invalid", "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted");
        }
        // Identity and deletion are the server's.
        for k in [
            "uid",
            "deletionTimestamp",
            "creationTimestamp",
            "namespace",
            "name",
        ] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
    }
    let rv = st.next_rv();
    commit(st, key, new, rv.clone());
    match st.instances.get(key) {
        Some(o) => respond(200, o),
        // Removed by the garbage rule: the server answers with the last state.
        None => {
            let mut last = old;
            last["metadata"]["resourceVersion"] = json!(rv);
            respond(200, &last)
        }
    }
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn list(st: &KubeState, ns: Option<&str>) -> Response<Body> {
    let items: Vec<&Value> = st
        .instances
        .iter()
        .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
        .map(|(_, o)| o)
        .collect();
    respond(
        200,
        &json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "EcsInstanceList",
                "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

/// A cluster-wide list, paged when asked (`limit`; the `continue` token is the offset, so,
/// unlike the API server's snapshot, a deletion between pages shifts the next page).
fn list_page(st: &KubeState, limit: Option<String>, cont: Option<String>) -> Response<Body> {
    let start: usize = cont.and_then(|c| c.parse().ok()).unwrap_or(0);
    // As the API server: no limit, or 0, is the whole list.
    let limit: usize = limit
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let items: Vec<&Value> = st.instances.values().skip(start).take(limit).collect();
    let end = start + items.len();
    let more = end < st.instances.len();
    respond(
        200,
        &json!({"apiVersion": format!("{GROUP}/{VERSION}"), "kind": "EcsInstanceList",
                "metadata": {"resourceVersion": st.rv.to_string(),
                             "continue": if more { end.to_string() } else { String::new() }},
                "items": items}),
    )
}

fn get(o: Option<&Value>, name: &str) -> Response<Body> {
    match o {
        Some(o) => respond(200, o),
        None => status(404, "NotFound", &format!("{name:?} not found")),
    }
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}
