//! Response encoding: JSON bodies, the output form asked for by `Accept` (plain objects,
//! server-side Tables, PartialObjectMetadata) and the fields every answered object carries.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, StatusCode};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::objects::meta_str;
use crate::registry::ResourceDef;
use crate::request::Query;
use crate::tables;

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

/// `obj` with the fields Kubernetes always returns for its kind (the kind's status
/// defaults), as every answer carries it.
pub fn present(def: &ResourceDef, mut obj: Value) -> Value {
    def.hooks.status_defaults(&mut obj);
    obj
}

/// One object in the requested output form.
pub fn object_output(def: &ResourceDef, obj: Value, output: &Output) -> Value {
    let obj = present(def, obj);
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

/// A list in the requested output form: `items` with the list's revision, continue token and
/// remaining count.
pub fn list_output(
    def: &ResourceDef,
    items: Vec<Value>,
    resource_version: &str,
    continue_token: Option<&str>,
    remaining: Option<usize>,
    output: &Output,
) -> Value {
    let items: Vec<Value> = items.into_iter().map(|o| present(def, o)).collect();
    match output {
        Output::Table(include) => tables::build_table(
            def.printer,
            &items,
            &tables::TableOptions {
                resource_version,
                continue_token,
                remaining,
                include_object: include,
                with_columns: true,
            },
            OffsetDateTime::now_utc(),
        ),
        out => {
            let mut metadata = json!({"resourceVersion": resource_version});
            if let Some(c) = continue_token {
                metadata["continue"] = json!(c);
            }
            if let Some(r) = remaining {
                metadata["remainingItemCount"] = json!(r);
            }
            let (kind, api_version, items) = if *out == Output::Metadata {
                (
                    "PartialObjectMetadataList".to_string(),
                    "meta.k8s.io/v1".to_string(),
                    items
                        .iter()
                        .map(tables::partial_object_metadata)
                        .collect::<Vec<_>>(),
                )
            } else {
                (format!("{}List", def.kind), def.api_version(), items)
            };
            json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})
        }
    }
}

#[cfg(test)]
mod tests {
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
}
