//! The generic REST handlers: get, list, create, update, patch, apply, delete and
//! deletecollection over the registry and the store, plus response encoding (JSON, Table,
//! PartialObjectMetadata).

use std::sync::{Arc, Mutex};

use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use kinit_auth::{NodeWrite, UserInfo};
use kinit_store::ListOptions;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::{ApiError, Cause};
use crate::objects::{decode, meta_str, now_string, resource_version, set_resource_version};
use crate::patch;
use crate::registry::{self, clear_system_metadata, ResourceDef};
use crate::request::{content_type, decode_body, Query, Target};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::State;
use crate::services::service_allocations;
use crate::tables;

/// Per-request context for writes.
pub struct Ctx<'a> {
    /// Server state.
    pub state: &'a Arc<State>,
    /// The target.
    pub target: &'a Target,
    /// Query parameters.
    pub query: &'a Query,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The caller.
    pub user: &'a UserInfo,
    /// `Warning` headers to add.
    pub warnings: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    fn def(&self) -> &'static ResourceDef {
        self.target.def
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        self.query.dry_run()
    }

    /// The field manager: `?fieldManager=` or the user agent's product name.
    pub fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }

    fn warn(&self, message: String) {
        if let Ok(mut w) = self.warnings.lock() {
            w.push(message);
        }
    }

    /// Adds the collected warnings to a response.
    pub fn finish(&self, mut resp: Response) -> Response {
        if let Ok(w) = self.warnings.lock() {
            for message in w.iter() {
                let v = format!(
                    "299 - {}",
                    serde_json::to_string(message).unwrap_or_default()
                );
                if let Ok(h) = HeaderValue::from_str(&v) {
                    resp.headers_mut().append(header::WARNING, h);
                }
            }
        }
        resp
    }
}

// ---- responses ----

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Table output options requested through `Accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON.
    Object,
    /// `as=Table`, with `includeObject`.
    Table(String),
    /// `as=PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
}

/// The output form asked for by the `Accept` header.
pub fn output_kind(headers: &HeaderMap, query: &Query) -> Output {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The first acceptable alternative wins; kubectl lists Table first and JSON as fallback.
    for alt in accept.split(',') {
        let params: Vec<&str> = alt.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or("");
        if media != "application/json"
            && media != "*/*"
            && media != "application/vnd.kubernetes.protobuf"
        {
            continue;
        }
        if params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") {
            return Output::Table(query.get("includeObject").unwrap_or("Metadata").to_string());
        }
        if params
            .iter()
            .any(|p| *p == "as=PartialObjectMetadata" || *p == "as=PartialObjectMetadataList")
        {
            return Output::Metadata;
        }
        if media == "application/json" || media == "*/*" {
            return Output::Object;
        }
    }
    Output::Object
}

fn object_output(def: &ResourceDef, obj: Value, output: &Output) -> Value {
    match output {
        Output::Object => obj,
        Output::Metadata => tables::partial_object_metadata(&obj),
        Output::Table(include) => {
            let rv = meta_str(&obj, "resourceVersion").to_string();
            tables::build_table(
                def.printer,
                &[obj],
                &tables::TableOptions::single(&rv, include, true),
                OffsetDateTime::now_utc(),
            )
        }
    }
}

// ---- read ----

/// GET of one object.
pub async fn get(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let t = ctx.target;
    let (obj, _) = ctx
        .state
        .objects
        .get_existing(t.def, &t.namespace, &t.name)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &object_output(t.def, obj, &output_kind(ctx.headers, ctx.query)),
    ))
}

/// Parsed list/watch options.
pub struct ListParams {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0 = all).
    pub limit: usize,
    /// Continue token.
    pub continue_token: Option<String>,
    /// `resourceVersion` parameter ("" when absent).
    pub resource_version: String,
    /// `resourceVersionMatch`.
    pub resource_version_match: String,
}

impl ListParams {
    /// From the query string.
    pub fn parse(def: &ResourceDef, query: &Query) -> Result<ListParams, ApiError> {
        let limit = match query.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
                .max(0) as usize,
            _ => 0,
        };
        Ok(ListParams {
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").unwrap_or(""),
                def.field_selectors,
            )?,
            limit,
            continue_token: query
                .get("continue")
                .filter(|c| !c.is_empty())
                .map(String::from),
            resource_version: query.get("resourceVersion").unwrap_or("").to_string(),
            resource_version_match: query.get("resourceVersionMatch").unwrap_or("").to_string(),
        })
    }

    /// Whether `obj` passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

fn encode_continue(revision: i64, start_after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": revision, "start": start_after}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "continue key is not valid: {token:?}; start the list again without `continue`"
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    Ok((rv, start))
}

/// A page of a list: items, the revision read at, continue token, remaining count.
pub struct Page {
    /// Matching objects.
    pub items: Vec<Value>,
    /// Revision of the read.
    pub revision: i64,
    /// Continue token when more items follow.
    pub continue_token: Option<String>,
    /// Items after this page (only without selectors).
    pub remaining: Option<usize>,
}

/// Reads one page of `def` objects in `namespace` ("" = all) honouring selectors and paging.
pub async fn list_page(
    state: &State,
    def: &ResourceDef,
    namespace: &str,
    params: &ListParams,
) -> Result<Page, ApiError> {
    let prefix = def.prefix(if namespace.is_empty() {
        None
    } else {
        Some(namespace)
    });
    let (mut revision, mut start_after) = match &params.continue_token {
        Some(tok) => {
            let (rv, start) = decode_continue(tok)?;
            if !start.starts_with(&prefix) {
                return Err(ApiError::bad_request("continue key does not belong to this list; start the list again without `continue`"));
            }
            (rv, Some(start))
        }
        None => {
            let rv = match (
                params.resource_version.as_str(),
                params.resource_version_match.as_str(),
            ) {
                (rv, "Exact") => rv.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("resourceVersion: invalid value {rv:?}"))
                })?,
                (rv, _) if !rv.is_empty() && rv != "0" => {
                    let wanted = rv.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("resourceVersion: invalid value {rv:?}"))
                    })?;
                    let current = state
                        .store
                        .current_revision()
                        .await
                        .map_err(|e| ApiError::from_store(e, def.group, def.resource, ""))?;
                    if wanted > current {
                        return Err(ApiError::from_store(
                            kinit_store::StoreError::FutureRevision {
                                requested: wanted,
                                current,
                            },
                            def.group,
                            def.resource,
                            "",
                        ));
                    }
                    0
                }
                _ => 0,
            };
            (rv, None)
        }
    };
    // A name pinned by the field selector turns the list into a point read.
    let pinned = params.fields.pinned_name().map(String::from);
    let mut items = Vec::new();
    let filtering = !params.labels.is_empty() || !params.fields.is_empty();
    loop {
        let want = if params.limit == 0 {
            0
        } else {
            params.limit - items.len()
        };
        let batch = if filtering && want > 0 {
            want.max(64)
        } else {
            want
        };
        let res = state
            .store
            .list(&prefix, &ListOptions { limit: batch, start_after: start_after.clone(), revision })
            .await
            .map_err(|e| match e {
                kinit_store::StoreError::Compacted { .. } if params.continue_token.is_some() => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                other => ApiError::from_store(other, def.group, def.resource, ""),
            })?;
        revision = res.revision;
        let mut last_key = None;
        let n = res.items.len();
        let mut consumed = 0;
        for kv in &res.items {
            consumed += 1;
            last_key = Some(kv.key.clone());
            if let Some(name) = &pinned {
                if !kv.key.ends_with(&format!("/{name}")) {
                    continue;
                }
            }
            let obj = decode(kv)?;
            if params.matches(&obj) {
                items.push(obj);
                if params.limit > 0 && items.len() >= params.limit {
                    break;
                }
            }
        }
        let more_in_store = res.remaining > 0 || consumed < n;
        if params.limit > 0 && items.len() >= params.limit {
            let continue_token = if more_in_store {
                last_key.as_deref().map(|k| encode_continue(revision, k))
            } else {
                None
            };
            let remaining = if filtering || !more_in_store {
                None
            } else {
                Some(res.remaining + (n - consumed))
            };
            return Ok(Page {
                items,
                revision,
                continue_token,
                remaining,
            });
        }
        if !more_in_store || last_key.is_none() {
            return Ok(Page {
                items,
                revision,
                continue_token: None,
                remaining: None,
            });
        }
        start_after = last_key;
    }
}

/// LIST.
pub async fn list(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let def = ctx.def();
    let params = ListParams::parse(def, ctx.query)?;
    let page = list_page(ctx.state, def, &ctx.target.namespace, &params).await?;
    let rv = page.revision.to_string();
    let body = match output_kind(ctx.headers, ctx.query) {
        Output::Table(include) => tables::build_table(
            def.printer,
            &page.items,
            &tables::TableOptions {
                resource_version: &rv,
                continue_token: page.continue_token.as_deref(),
                remaining: page.remaining,
                include_object: &include,
                with_columns: true,
            },
            OffsetDateTime::now_utc(),
        ),
        out => {
            let mut metadata = json!({"resourceVersion": rv});
            if let Some(c) = &page.continue_token {
                metadata["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                metadata["remainingItemCount"] = json!(r);
            }
            let (kind, api_version, items) = if out == Output::Metadata {
                (
                    "PartialObjectMetadataList".to_string(),
                    "meta.k8s.io/v1".to_string(),
                    page.items
                        .iter()
                        .map(tables::partial_object_metadata)
                        .collect::<Vec<_>>(),
                )
            } else {
                (format!("{}List", def.kind), def.api_version(), page.items)
            };
            json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

// ---- shared write pipeline ----

fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object of kind {}",
            def.kind
        )));
    }
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): kind {kind:?} does not match the URL",
            def.kind
        )));
    }
    if !api_version.is_empty() && api_version != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    obj["kind"] = json!(def.kind);
    obj["apiVersion"] = json!(def.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

/// Typed check of an object: type errors → 400; unknown fields per `fieldValidation`.
fn schema_check(ctx: &Ctx<'_>, obj: Value) -> Result<Value, ApiError> {
    let def = ctx.def();
    let normalized = (def.normalize)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    if !normalized.unknown_fields.is_empty() {
        let fields: Vec<String> = normalized
            .unknown_fields
            .iter()
            .filter(|f| !f.starts_with(".metadata.managedFields"))
            .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
            .collect();
        if !fields.is_empty() {
            match ctx.query.get("fieldValidation").unwrap_or("Warn") {
                "Strict" => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )))
                }
                "Ignore" => {}
                _ => fields.into_iter().for_each(|f| ctx.warn(f)),
            }
        }
    }
    Ok(normalized.object)
}

fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(def.group, def.kind, meta_str(obj, "name"), causes)
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks that `namespace` exists and is not terminating (for creates).
pub async fn check_namespace(
    state: &State,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !def.namespaced {
        return Ok(());
    }
    let ns_def = registry::find("", "v1", "namespaces").expect("namespaces served");
    match state.objects.get(ns_def, "", namespace).await? {
        None => Err(ApiError::not_found("", "namespaces", namespace)),
        Some((ns, _)) => {
            let terminating = ns.pointer("/status/phase").and_then(Value::as_str)
                == Some("Terminating")
                || ns
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null());
            if terminating {
                Err(ApiError::forbidden(
                    def.group,
                    def.resource,
                    name,
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        crate::error::qualified(def.group, def.resource)
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Fills `metadata` of a new object and runs defaulting, schema check and validation.
fn prepare_new(ctx: &Ctx<'_>, mut obj: Value) -> Result<Value, ApiError> {
    let def = ctx.def();
    check_type_meta(def, &mut obj)?;
    let url_ns = ctx.target.namespace.as_str();
    {
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        if def.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !body_ns.is_empty() && body_ns != url_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta.insert("namespace".into(), json!(url_ns));
        } else {
            meta.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let prefix: String = prefix.chars().take(58).collect();
                meta.insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
            }
        }
        clear_system_metadata(meta);
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_string()));
        if def.tracks_generation {
            meta.insert("generation".into(), json!(1));
        }
    }
    if def.reset_status_on_create {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let mut obj = schema_check(ctx, obj)?;
    (def.default)(&mut obj);
    kind_prepare_create(def, &mut obj);
    let causes = (def.validate)(&obj);
    if !causes.is_empty() {
        return Err(invalid(def, &obj, causes));
    }
    Ok(obj)
}

/// Kind-specific changes on create that need the uid or reset status.
fn kind_prepare_create(def: &ResourceDef, obj: &mut Value) {
    match (def.group, def.kind) {
        ("batch", "Job") => crate::validation::prepare_job(obj),
        ("", "Pod") => {
            let qos = pod_qos_class(obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
            default_toleration_seconds(obj);
        }
        ("", "Service") => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("", "Namespace") => {
            obj["status"] = json!({"phase": "Active"});
        }
        _ => {}
    }
}

/// The DefaultTolerationSeconds admission plugin: pods tolerate the node lifecycle
/// controller's `not-ready`/`unreachable` NoExecute taints for 300 s unless they say otherwise.
pub fn default_toleration_seconds(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            (effect.is_empty() || effect == "NoExecute")
                && (k == key || (k.is_empty() && op == "Exists"))
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// Kubernetes' QoS class of a pod: Guaranteed, Burstable or BestEffort.
pub fn pod_qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let r = requests.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Writes the authenticated requester into a CSR's `spec.username/uid/groups/extra`.
pub fn set_csr_requester(csr: &mut Value, user: &kinit_auth::UserInfo) {
    if !csr.get("spec").is_some_and(Value::is_object) {
        csr["spec"] = json!({});
    }
    let spec = &mut csr["spec"];
    spec["username"] = json!(user.name);
    for (key, present) in [
        ("uid", !user.uid.is_empty()),
        ("groups", !user.groups.is_empty()),
        ("extra", !user.extra.is_empty()),
    ] {
        if present {
            spec[key] = match key {
                "uid" => json!(user.uid),
                "groups" => json!(user.groups),
                _ => json!(user.extra),
            };
        } else if let Some(m) = spec.as_object_mut() {
            m.remove(key);
        }
    }
}

/// Stores a prepared new object (allocations, managed fields, dry run, post-create hooks).
async fn store_new(ctx: &Ctx<'_>, mut obj: Value, managed: Vec<Value>) -> Result<Value, ApiError> {
    let def = ctx.def();
    let ns = ctx.target.namespace.clone();
    let name = meta_str(&obj, "name").to_string();
    check_namespace(ctx.state, def, &ns, &name).await?;
    if def.group.is_empty() && def.kind == "Pod" {
        admit_node_pod(ctx, &obj).await?;
    }
    if def.group.is_empty() && def.kind == "Node" {
        admit_node_node(ctx, &obj, None).await?;
    }
    crate::escalation::admit(ctx, &obj, None).await?;
    if def.group == "certificates.k8s.io" && def.kind == "CertificateSigningRequest" {
        // Like Kubernetes' CSR strategy: the requester's identity comes from authentication,
        // never from the body, so approvers can trust spec.username/groups.
        set_csr_requester(&mut obj, ctx.user);
    }
    if !managed.is_empty() {
        obj["metadata"]["managedFields"] = json!(managed);
    }
    if ctx.dry_run()? {
        return Ok(obj);
    }
    let mut allocated = None;
    if def.group.is_empty() && def.kind == "Service" {
        allocated = Some(
            ctx.state
                .services
                .allocate_for(&mut obj, &format!("{ns}/{name}"))
                .await?,
        );
    }
    let created = match ctx.state.objects.create(def, &ns, &name, &obj).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(a) = allocated {
                ctx.state.services.release(&a).await;
            }
            return Err(e);
        }
    };
    if def.group.is_empty() && def.kind == "Namespace" {
        crate::bootstrap::ensure_default_service_account(ctx.state, &name).await;
    }
    Ok(created)
}

async fn admit_node_pod(ctx: &Ctx<'_>, obj: &Value) -> Result<(), ApiError> {
    if ctx.user.node_name().is_none() {
        return Ok(());
    }
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(obj.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    ctx.state
        .access
        .node
        .admit(ctx.user, NodeWrite::CreatePod(&pod))
        .await
        .map_err(|e| node_forbidden(ctx, e))
}

async fn admit_node_node(ctx: &Ctx<'_>, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if ctx.user.node_name().is_none() {
        return Ok(());
    }
    let new: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(new.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let old: Option<k8s_openapi::api::core::v1::Node> = match old {
        Some(o) => Some(
            serde_json::from_value(o.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    ctx.state
        .access
        .node
        .admit(
            ctx.user,
            NodeWrite::Node {
                new: &new,
                old: old.as_ref(),
            },
        )
        .await
        .map_err(|e| node_forbidden(ctx, e))
}

/// 403 for a node-restriction refusal (500 for lookup failures).
pub fn node_forbidden(ctx: &Ctx<'_>, e: kinit_auth::AuthError) -> ApiError {
    let def = ctx.def();
    match e {
        kinit_auth::AuthError::Forbidden(m) => {
            ApiError::forbidden(def.group, def.resource, &ctx.target.name, m)
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// POST: create.
pub async fn create(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let input = decode_body(ctx.headers, body)?;
    let obj = prepare_new(ctx, input.clone())?;
    let mut managed = Vec::new();
    patch::record_update(
        &mut managed,
        &input,
        &ctx.manager(),
        "Update",
        &def.api_version(),
        &now_string(),
        "",
    );
    let created = store_new(ctx, obj, managed).await?;
    Ok(ctx.finish(json_response(StatusCode::CREATED, &created)))
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status.
    Main,
    /// `status` only.
    Status,
    /// `status.conditions` of a CSR (approval).
    Approval,
    /// `spec.finalizers` of a namespace.
    Finalize,
    /// `spec.ephemeralContainers` of a pod.
    EphemeralContainers,
}

impl Part {
    /// The part a subresource writes.
    pub fn of(subresource: &str) -> Option<Part> {
        Some(match subresource {
            "" => Part::Main,
            "status" => Part::Status,
            "approval" => Part::Approval,
            "finalize" => Part::Finalize,
            "ephemeralcontainers" => Part::EphemeralContainers,
            _ => return None,
        })
    }

    fn subresource(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Status => "status",
            Part::Approval => "approval",
            Part::Finalize => "finalize",
            Part::EphemeralContainers => "ephemeralcontainers",
        }
    }
}

fn take(from: &Value, ptr: &str) -> Option<Value> {
    from.pointer(ptr).cloned()
}

fn put(into: &mut Value, path: &[&str], value: Option<Value>) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = into;
    for p in parents {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = cur.get_mut(*p).expect("just inserted");
    }
    match value {
        Some(v) => cur[*last] = v,
        None => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(*last);
            }
        }
    }
}

/// Combines the stored object and a full new object according to the part written.
fn combine(def: &ResourceDef, part: Part, old: &Value, new: Value) -> Value {
    match part {
        Part::Main => {
            let mut out = new;
            if def.has_status {
                put(&mut out, &["status"], take(old, "/status"));
            }
            out
        }
        Part::Status => {
            let mut out = old.clone();
            put(&mut out, &["status"], take(&new, "/status"));
            out
        }
        Part::Approval => {
            let mut out = old.clone();
            put(
                &mut out,
                &["status", "conditions"],
                take(&new, "/status/conditions"),
            );
            out
        }
        Part::Finalize => {
            let mut out = old.clone();
            put(
                &mut out,
                &["spec", "finalizers"],
                take(&new, "/spec/finalizers"),
            );
            out
        }
        Part::EphemeralContainers => {
            let mut out = old.clone();
            put(
                &mut out,
                &["spec", "ephemeralContainers"],
                take(&new, "/spec/ephemeralContainers"),
            );
            out
        }
    }
}

/// Prepares an updated object: type meta, identity checks, system metadata from `old`,
/// part combination, schema check, defaulting, validation, generation.
fn prepare_update(
    ctx: &Ctx<'_>,
    part: Part,
    old: &Value,
    mut new: Value,
) -> Result<Value, ApiError> {
    let def = ctx.def();
    check_type_meta(def, &mut new)?;
    let name = ctx.target.name.as_str();
    let body_name = meta_str(&new, "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta_str(&new, "namespace");
    if def.namespaced && !body_ns.is_empty() && body_ns != ctx.target.namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut out = combine(def, part, old, new);
    {
        let meta = out["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        meta.insert("name".into(), json!(name));
        if def.namespaced {
            meta.insert("namespace".into(), json!(ctx.target.namespace));
        } else {
            meta.remove("namespace");
        }
        for key in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{key}")) {
                Some(v) => {
                    meta.insert(key.into(), v.clone());
                }
                None => {
                    meta.remove(key);
                }
            }
        }
        if meta
            .get("finalizers")
            .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty))
        {
            meta.remove("finalizers");
        }
    }
    let mut out = schema_check(ctx, out)?;
    (def.default)(&mut out);
    let mut causes = (def.validate)(&out);
    causes.extend((def.validate_update)(&out, old));
    if !causes.is_empty() {
        return Err(invalid(def, &out, causes));
    }
    if def.tracks_generation {
        let old_gen = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let gen = if out.get("spec") != old.get("spec") {
            old_gen + 1
        } else {
            old_gen
        };
        out["metadata"]["generation"] = json!(gen);
    }
    Ok(out)
}

fn strip_volatile(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(meta) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    c
}

/// Stores an updated object (no-op detection, finalizer completion, allocations, dry run).
async fn store_update(
    ctx: &Ctx<'_>,
    old: &Value,
    old_rev: i64,
    mut new: Value,
    managed: Vec<Value>,
) -> Result<Value, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    if def.group.is_empty() && def.kind == "Node" {
        admit_node_node(ctx, &new, Some(old)).await?;
    }
    crate::escalation::admit(ctx, &new, Some(old)).await?;
    if strip_volatile(&new) == strip_volatile(old) {
        return Ok(old.clone());
    }
    if managed.is_empty() {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
    } else {
        new["metadata"]["managedFields"] = json!(managed);
    }
    let deleting = new
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let no_finalizers = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let namespace_done = !(def.group.is_empty() && def.kind == "Namespace")
        || new
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    let pod_waiting_for_agent = def.group.is_empty()
        && def.kind == "Pod"
        && !meta_str(&new, "name").is_empty()
        && new
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
    if ctx.dry_run()? {
        return Ok(new);
    }
    if deleting && no_finalizers && namespace_done && !pod_waiting_for_agent {
        // The last finalizer is gone: the object goes away now.
        let deleted = ctx
            .state
            .objects
            .delete(def, &t.namespace, &t.name, old_rev)
            .await?;
        after_delete(ctx, &deleted).await;
        return Ok(deleted);
    }
    let mut new = new;
    if def.group.is_empty() && def.kind == "Service" {
        let owner = format!("{}/{}", t.namespace, t.name);
        let (allocated, freed) = ctx
            .state
            .services
            .reconcile_update(&mut new, old, &owner)
            .await?;
        match ctx
            .state
            .objects
            .update(def, &t.namespace, &t.name, &new, old_rev)
            .await
        {
            Ok(v) => {
                ctx.state.services.release(&freed).await;
                return Ok(v);
            }
            Err(e) => {
                ctx.state.services.release(&allocated).await;
                return Err(e);
            }
        }
    }
    ctx.state
        .objects
        .update(def, &t.namespace, &t.name, &new, old_rev)
        .await
}

/// PUT: replace (main resource or a part).
pub async fn update(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    let input = decode_body(ctx.headers, body)?;
    let precondition = resource_version(&input);
    let (old, old_rev) = ctx
        .state
        .objects
        .get_existing(def, &t.namespace, &t.name)
        .await?;
    if let Some(rv) = precondition {
        if rv != old_rev {
            return Err(ApiError::conflict(
                def.group,
                def.resource,
                &t.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
    }
    let new = prepare_update(ctx, part, &old, input.clone())?;
    let mut managed = old
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    patch::record_update(
        &mut managed,
        &input,
        &ctx.manager(),
        "Update",
        &def.api_version(),
        &now_string(),
        part.subresource(),
    );
    let stored = store_update(ctx, &old, old_rev, new, managed).await?;
    Ok(ctx.finish(json_response(StatusCode::OK, &stored)))
}

/// Applies a PATCH body of the request's content type to `old`.
pub fn apply_patch_body(
    ctx: &Ctx<'_>,
    old: &Value,
    body: &Bytes,
) -> Result<(Value, Value), ApiError> {
    let ct = content_type(ctx.headers);
    let patch_value = decode_body(ctx.headers, body)?;
    let patched = match ct.as_str() {
        "application/json-patch+json" => patch::json_patch(old, &patch_value).map_err(ApiError::unprocessable_patch)?,
        "application/merge-patch+json" => patch::merge_patch(old, &patch_value),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge(old, &patch_value).map_err(ApiError::unprocessable_patch)?
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}); accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            )))
        }
    };
    Ok((patched, patch_value))
}

/// PATCH (merge, JSON, strategic; server-side apply goes to [`apply`]).
pub async fn patch(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    if content_type(ctx.headers) == "application/apply-patch+yaml" {
        return apply(ctx, part, body).await;
    }
    for _attempt in 0..8 {
        let (old, old_rev) = ctx
            .state
            .objects
            .get_existing(def, &t.namespace, &t.name)
            .await?;
        let (patched, patch_value) = apply_patch_body(ctx, &old, body)?;
        let precondition = patch_value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok());
        if let Some(rv) = precondition {
            if rv != old_rev {
                return Err(ApiError::conflict(def.group, def.resource, &t.name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
        }
        let new = prepare_update(ctx, part, &old, patched)?;
        let mut managed = old
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let fields_body = if patch_value.is_object() {
            patch_value.clone()
        } else {
            json!({})
        };
        patch::record_update(
            &mut managed,
            &fields_body,
            &ctx.manager(),
            "Update",
            &def.api_version(),
            &now_string(),
            part.subresource(),
        );
        match store_update(ctx, &old, old_rev, new, managed).await {
            Ok(stored) => return Ok(ctx.finish(json_response(StatusCode::OK, &stored))),
            Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        def.group,
        def.resource,
        &t.name,
        "too many concurrent writes; try again",
    ))
}

/// Server-side apply (`application/apply-patch+yaml`).
pub async fn apply(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    let manager = match ctx.query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::required("fieldManager")
                    .with_message("Required value: is required for apply patch")],
            ))
        }
    };
    let force = ctx.query.flag("force");
    let mut applied = decode_body(ctx.headers, body)?;
    check_type_meta(def, &mut applied)?;
    let body_name = meta_str(&applied, "name");
    if !body_name.is_empty() && body_name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            t.name
        )));
    }
    if let Some(meta) = applied["metadata"].as_object_mut() {
        meta.insert("name".into(), json!(t.name));
        if def.namespaced {
            meta.insert("namespace".into(), json!(t.namespace));
        }
    }
    let now = now_string();
    for _attempt in 0..8 {
        let existing = ctx.state.objects.get(def, &t.namespace, &t.name).await?;
        let result = patch::server_side_apply(
            existing.as_ref().map(|(v, _)| v),
            &applied,
            &manager,
            force,
            &def.api_version(),
            &now,
        );
        let merged = match result {
            Ok(m) => m,
            Err(conflicts) => {
                let causes: Vec<Cause> = conflicts
                    .iter()
                    .map(|c| Cause {
                        reason: "FieldManagerConflict",
                        message: format!("conflict with \"{}\"", c.manager),
                        field: c.field.clone(),
                    })
                    .collect();
                let list: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("- {}: {}", c.manager, c.field))
                    .collect();
                let mut e = ApiError::conflict(def.group, def.resource, &t.name, "");
                e.message = format!(
                    "Apply failed with {} conflict(s): conflicts with other field managers:\n{}",
                    conflicts.len(),
                    list.join("\n")
                );
                if let Some(d) = e.details.as_mut() {
                    d["causes"] = json!(causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field})
                        )
                        .collect::<Vec<_>>());
                }
                return Err(e);
            }
        };
        match existing {
            None => {
                if part != Part::Main {
                    return Err(ApiError::not_found(def.group, def.resource, &t.name));
                }
                let obj = prepare_new(ctx, merged.object)?;
                match store_new(ctx, obj, merged.managed_fields).await {
                    Ok(created) => {
                        return Ok(ctx.finish(json_response(StatusCode::CREATED, &created)))
                    }
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            Some((old, old_rev)) => {
                let new = prepare_update(ctx, part, &old, merged.object)?;
                match store_update(ctx, &old, old_rev, new, merged.managed_fields).await {
                    Ok(stored) => return Ok(ctx.finish(json_response(StatusCode::OK, &stored))),
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(ApiError::conflict(
        def.group,
        def.resource,
        &t.name,
        "too many concurrent writes; try again",
    ))
}

// ---- delete ----

/// Options of a delete (body `DeleteOptions` and query parameters).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Grace period override.
    pub grace_period_seconds: Option<i64>,
    /// Orphan, Background or Foreground.
    pub propagation_policy: Option<String>,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// From the optional JSON body and the query.
    pub fn parse(body: Option<&Value>, query: &Query) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions::default();
        if let Some(b) = body {
            o.grace_period_seconds = b.get("gracePeriodSeconds").and_then(Value::as_i64);
            o.propagation_policy = b
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(String::from);
            if o.propagation_policy.is_none() {
                if let Some(orphan) = b.get("orphanDependents").and_then(Value::as_bool) {
                    o.propagation_policy =
                        Some(if orphan { "Orphan" } else { "Background" }.into());
                }
            }
            o.uid = b
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from);
            o.resource_version = b
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
        }
        if let Some(g) = query.get("gracePeriodSeconds") {
            o.grace_period_seconds = Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
            })?);
        }
        if let Some(p) = query.get("propagationPolicy") {
            o.propagation_policy = Some(p.to_string());
        }
        if let Some(p) = &o.propagation_policy {
            if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "DeleteOptions",
                    "",
                    vec![Cause::not_supported(
                        "propagationPolicy",
                        p,
                        &["Foreground", "Background", "Orphan"],
                    )],
                ));
            }
        }
        if let Some(g) = o.grace_period_seconds {
            if g < 0 {
                o.grace_period_seconds = Some(0);
            }
        }
        Ok(o)
    }
}

/// Deletes one object (graceful for pods on nodes, finalizers, namespaces); returns the
/// status code and body.
pub async fn delete_object(
    ctx: &Ctx<'_>,
    name: &str,
    options: &DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let def = ctx.def();
    let ns = ctx.target.namespace.as_str();
    let dry = ctx.dry_run()?;
    for _attempt in 0..8 {
        let (old, old_rev) = ctx.state.objects.get_existing(def, ns, name).await?;
        if let Some(uid) = &options.uid {
            if meta_str(&old, "uid") != uid {
                return Err(ApiError::conflict(
                    def.group,
                    def.resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid")
                    ),
                ));
            }
        }
        if let Some(rv) = &options.resource_version {
            if *rv != old_rev.to_string() {
                return Err(ApiError::conflict(def.group, def.resource, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {old_rev}")));
            }
        }
        let mut new = old.clone();
        let already_deleting = old
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        let now = OffsetDateTime::now_utc();
        // Namespaces: Terminating until the namespace controller empties spec.finalizers.
        if def.group.is_empty() && def.kind == "Namespace" {
            let spec_finalizers = old
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            let meta_finalizers = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if spec_finalizers || meta_finalizers {
                if already_deleting {
                    return Ok((StatusCode::OK, old));
                }
                new["metadata"]["deletionTimestamp"] = json!(tables::format_time(now));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                new["status"]["phase"] = json!("Terminating");
                if dry {
                    return Ok((StatusCode::OK, new));
                }
                match ctx.state.objects.update(def, ns, name, &new, old_rev).await {
                    Ok(v) => return Ok((StatusCode::OK, v)),
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        let mut finalizers: Vec<Value> = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match options.propagation_policy.as_deref() {
            Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                finalizers.push(json!("foregroundDeletion"))
            }
            Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                finalizers.push(json!("orphan"))
            }
            _ => {}
        }
        let graceful_pod = def.group.is_empty()
            && def.kind == "Pod"
            && old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && old
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .is_none_or(|p| p != "Succeeded" && p != "Failed");
        let grace = if graceful_pod {
            options.grace_period_seconds.unwrap_or_else(|| {
                old.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            })
        } else {
            0
        };
        if already_deleting {
            let current = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if finalizers.is_empty() && grace == 0 {
                // Forced (grace 0) removal of an object waiting for its grace period: below.
            } else if grace > 0 && grace < current {
                // Only a shorter grace period changes an object already being deleted.
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                new["metadata"]["deletionTimestamp"] =
                    json!(tables::format_time(now + time::Duration::seconds(grace)));
                if dry {
                    return Ok((StatusCode::OK, new));
                }
                match ctx.state.objects.update(def, ns, name, &new, old_rev).await {
                    Ok(v) => return Ok((StatusCode::OK, v)),
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => return Err(e),
                }
            } else {
                return Ok((StatusCode::OK, old));
            }
        } else if !finalizers.is_empty() || grace > 0 {
            new["metadata"]["deletionTimestamp"] =
                json!(tables::format_time(now + time::Duration::seconds(grace)));
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if !finalizers.is_empty() {
                new["metadata"]["finalizers"] = json!(finalizers);
            }
            if def.tracks_generation {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            if dry {
                return Ok((StatusCode::OK, new));
            }
            match ctx.state.objects.update(def, ns, name, &new, old_rev).await {
                Ok(v) => return Ok((StatusCode::OK, v)),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        if dry {
            return Ok((
                StatusCode::OK,
                success_status(def, name, meta_str(&old, "uid")),
            ));
        }
        match ctx.state.objects.delete(def, ns, name, old_rev).await {
            Ok(deleted) => {
                after_delete(ctx, &deleted).await;
                let body = if def.group.is_empty() && def.kind == "Pod" {
                    deleted
                } else {
                    success_status(def, name, meta_str(&old, "uid"))
                };
                return Ok((StatusCode::OK, body));
            }
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(
        def.group,
        def.resource,
        name,
        "too many concurrent writes; try again",
    ))
}

fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": def.resource, "uid": uid});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Releases what a deleted object held (service IPs and ports).
async fn after_delete(ctx: &Ctx<'_>, deleted: &Value) {
    let def = ctx.def();
    if def.group.is_empty() && def.kind == "Service" {
        ctx.state
            .services
            .release(&service_allocations(deleted))
            .await;
    }
}

fn delete_body(ctx: &Ctx<'_>, body: &Bytes) -> Result<Option<Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    decode_body(ctx.headers, body).map(Some)
}

/// DELETE of one object.
pub async fn delete(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let b = delete_body(ctx, body)?;
    let options = DeleteOptions::parse(b.as_ref(), ctx.query)?;
    let (code, v) = delete_object(ctx, &ctx.target.name, &options).await?;
    Ok(json_response(code, &v))
}

/// DELETE of a collection (selectors honoured); answers the list of deleted objects.
pub async fn delete_collection(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let b = delete_body(ctx, body)?;
    let options = DeleteOptions::parse(b.as_ref(), ctx.query)?;
    let params = ListParams::parse(def, ctx.query)?;
    let page = list_page(
        ctx.state,
        def,
        &ctx.target.namespace,
        &ListParams {
            limit: 0,
            continue_token: None,
            ..params
        },
    )
    .await?;
    let mut deleted = Vec::new();
    for item in page.items {
        let name = meta_str(&item, "name").to_string();
        let item_ns = meta_str(&item, "namespace").to_string();
        let target = Target {
            namespace: item_ns,
            name: name.clone(),
            ..ctx.target.clone()
        };
        let sub = Ctx {
            state: ctx.state,
            target: &target,
            query: ctx.query,
            headers: ctx.headers,
            user: ctx.user,
            warnings: Mutex::new(Vec::new()),
        };
        match delete_object(&sub, &name, &options).await {
            Ok((_, v)) if v.get("kind").and_then(Value::as_str) == Some(def.kind) => {
                deleted.push(v)
            }
            Ok(_) => {
                let mut gone = item.clone();
                set_resource_version(&mut gone, page.revision);
                deleted.push(gone);
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rv = ctx
        .state
        .store
        .current_revision()
        .await
        .map_err(|e| ApiError::from_store(e, def.group, def.resource, ""))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn csr_requester_comes_from_authentication() {
        let mut csr = json!({"spec": {"username": "system:node:forged", "groups": ["system:masters"], "uid": "x"}});
        let user = kinit_auth::UserInfo::new(
            "system:bootstrap:abcdef",
            vec!["system:bootstrappers".to_string()],
        );
        set_csr_requester(&mut csr, &user);
        assert_eq!(csr["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(csr["spec"]["groups"], json!(["system:bootstrappers"]));
        assert!(csr["spec"].get("uid").is_none());
    }

    #[test]
    fn default_tolerations_added_unless_present() {
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        default_toleration_seconds(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["tolerationSeconds"], 300);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_toleration_seconds(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }

    use super::*;

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json".parse().unwrap());
        assert_eq!(
            output_kind(&h, &Query::default()),
            Output::Table("Metadata".into())
        );
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert_eq!(output_kind(&h, &Query::default()), Output::Object);
        h.insert(header::ACCEPT, "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json".parse().unwrap());
        assert_eq!(output_kind(&h, &Query::default()), Output::Metadata);
    }

    #[test]
    fn continue_tokens_roundtrip() {
        let t = encode_continue(42, "/registry/pods/default/web-3");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/pods/default/web-3".to_string())
        );
        assert_eq!(decode_continue("garbage!").unwrap_err().code, 400);
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            pod_qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})),
            "BestEffort"
        );
        assert_eq!(
            pod_qos_class(
                &json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}})
            ),
            "Guaranteed"
        );
        assert_eq!(
            pod_qos_class(
                &json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}})
            ),
            "Burstable"
        );
    }

    #[test]
    fn delete_options_parse() {
        let q = Query::parse(Some("gracePeriodSeconds=0")).unwrap();
        let o = DeleteOptions::parse(
            Some(&json!({"propagationPolicy": "Foreground", "preconditions": {"uid": "u"}})),
            &q,
        )
        .unwrap();
        assert_eq!(o.grace_period_seconds, Some(0));
        assert_eq!(o.propagation_policy.as_deref(), Some("Foreground"));
        assert_eq!(o.uid.as_deref(), Some("u"));
        assert!(DeleteOptions::parse(
            Some(&json!({"propagationPolicy": "Sideways"})),
            &Query::default()
        )
        .is_err());
    }

    #[test]
    fn combine_parts() {
        let def = registry::find("apps", "v1", "deployments").unwrap();
        let old = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
        let new = json!({"spec": {"replicas": 2}, "status": {"replicas": 9}});
        assert_eq!(
            combine(def, Part::Main, &old, new.clone()),
            json!({"spec": {"replicas": 2}, "status": {"replicas": 1}})
        );
        assert_eq!(
            combine(def, Part::Status, &old, new),
            json!({"spec": {"replicas": 1}, "status": {"replicas": 9}})
        );
    }
}
