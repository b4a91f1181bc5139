//! The Swagger 2.0 (`/openapi/v2`) document, derived from the filtered v3 documents.
//!
//! Kubernetes generates both from the same Go definitions; the differences are mechanical:
//! `#/components/schemas/` becomes `#/definitions/`, a `$ref` wrapped in a one-element `allOf`
//! (v3's way to give a reference a description or default) becomes a plain `$ref`, query and
//! path parameters carry their type inline, request bodies become a `body` parameter, and
//! responses name their schema directly with the media types in `consumes`/`produces`.

use serde_json::{json, Map, Value};

use crate::filter::V3_SCHEMA_REF;

const V2_SCHEMA_REF: &str = "#/definitions/";

/// Rewrites a v3 schema into its Swagger 2.0 form.
pub fn schema(v3: &Value) -> Value {
    match v3 {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "$ref" => {
                        let r = v.as_str().unwrap_or_default();
                        let r = match r.strip_prefix(V3_SCHEMA_REF) {
                            Some(name) => format!("{V2_SCHEMA_REF}{name}"),
                            None => r.to_string(),
                        };
                        out.insert(k.clone(), Value::String(r));
                    }
                    // A lone `allOf: [{$ref}]` is how v3 decorates a reference.
                    "allOf" if v.as_array().is_some_and(|a| a.len() == 1) => {
                        if let Value::Object(inner) = schema(&v[0]) {
                            out.extend(inner);
                        }
                    }
                    // Swagger 2.0 has no `nullable`.
                    "nullable" => {}
                    // Property maps hold names, not schema keywords: rewrite their values only.
                    "properties" | "patternProperties" => {
                        let props = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), schema(s))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(schema).collect()),
        other => other.clone(),
    }
}

/// A v3 query/path parameter (`schema: {type: …}`) in its v2 form (type inline).
fn parameter(v3: &Value) -> Value {
    let mut out = Map::new();
    if let Some(map) = v3.as_object() {
        for (k, v) in map {
            if k == "schema" {
                if let Value::Object(inner) = schema(v) {
                    out.extend(inner);
                }
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn parameters(v3: &Value) -> Vec<Value> {
    v3.as_array()
        .map(|ps| ps.iter().map(parameter).collect())
        .unwrap_or_default()
}

/// One v3 operation in its v2 form.
fn operation(v3: &Value) -> Value {
    let mut out = Map::new();
    let mut params = parameters(&v3["parameters"]);
    let mut consumes: Vec<String> = Vec::new();
    if let Some(body) = v3["requestBody"].as_object() {
        let content = body.get("content").and_then(Value::as_object);
        consumes = content
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        let body_schema = content
            .and_then(|c| c.values().next())
            .map(|mt| schema(&mt["schema"]))
            .unwrap_or_else(|| json!({}));
        let mut p = json!({"name": "body", "in": "body", "required": true, "schema": body_schema});
        if let Some(required) = body.get("required") {
            p["required"] = required.clone();
        }
        params.insert(0, p);
    }
    let mut produces: Vec<String> = Vec::new();
    let mut responses = Map::new();
    if let Some(rs) = v3["responses"].as_object() {
        for (code, r) in rs {
            let mut resp = Map::new();
            if let Some(d) = r.get("description") {
                resp.insert("description".into(), d.clone());
            }
            if let Some(content) = r.get("content").and_then(Value::as_object) {
                for mt in content.keys() {
                    if !produces.contains(mt) {
                        produces.push(mt.clone());
                    }
                }
                if let Some(first) = content.values().next() {
                    resp.insert("schema".into(), schema(&first["schema"]));
                }
            }
            responses.insert(code.clone(), Value::Object(resp));
        }
    }
    if let Some(map) = v3.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "parameters" | "requestBody" | "responses" => {}
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !consumes.is_empty() {
        out.insert("consumes".into(), json!(consumes));
    }
    if !produces.is_empty() {
        out.insert("produces".into(), json!(produces));
    }
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Array(params));
    }
    out.insert("responses".into(), Value::Object(responses));
    out.insert("schemes".into(), json!(["https"]));
    Value::Object(out)
}

/// One v3 path item in its v2 form.
fn path_item(v3: &Value) -> Value {
    let mut out = Map::new();
    if let Some(map) = v3.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "parameters" => {
                    out.insert(k.clone(), Value::Array(parameters(v)));
                }
                "get" | "put" | "post" | "delete" | "options" | "head" | "patch" => {
                    out.insert(k.clone(), operation(v));
                }
                // `description`, `summary`, `servers` have no v2 counterpart on a path.
                _ if k.starts_with("x-") => {
                    out.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
    }
    Value::Object(out)
}

/// Merges the filtered v3 documents into one Swagger 2.0 document.
pub fn document<'a>(v3_docs: impl IntoIterator<Item = &'a Value>, version: &str) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for doc in v3_docs {
        if let Some(ps) = doc["paths"].as_object() {
            for (p, item) in ps {
                paths.insert(p.clone(), path_item(item));
            }
        }
        if let Some(ss) = doc["components"]["schemas"].as_object() {
            for (name, s) in ss {
                definitions.entry(name.clone()).or_insert_with(|| schema(s));
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {
                "description": "Bearer Token authentication",
                "type": "apiKey",
                "name": "authorization",
                "in": "header",
            }
        },
        "security": [{"BearerToken": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decorated_reference_becomes_plain_ref_with_description() {
        let v3 = json!({
            "properties": {
                "selector": {
                    "allOf": [{"$ref": "#/components/schemas/io.k8s.X"}],
                    "description": "Label selector",
                    "default": {}
                },
                "allOf": {"type": "string"}
            },
            "nullable": true
        });
        let v2 = schema(&v3);
        assert_eq!(
            v2,
            json!({
                "properties": {
                    "selector": {"$ref": "#/definitions/io.k8s.X", "description": "Label selector", "default": {}},
                    "allOf": {"type": "string"}
                }
            })
        );
    }

    #[test]
    fn request_body_and_typed_parameters() {
        let op = operation(&json!({
            "operationId": "patchX",
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
            "requestBody": {"content": {"application/strategic-merge-patch+json": {"schema": {"$ref": "#/components/schemas/P"}}}, "required": true},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/D"}}}}},
            "x-kubernetes-action": "patch"
        }));
        assert_eq!(op["parameters"][0]["in"], "body");
        assert_eq!(op["parameters"][0]["schema"]["$ref"], "#/definitions/P");
        assert_eq!(op["parameters"][1]["type"], "string");
        assert_eq!(op["consumes"][0], "application/strategic-merge-patch+json");
        assert_eq!(op["responses"]["200"]["schema"]["$ref"], "#/definitions/D");
        assert_eq!(op["x-kubernetes-action"], "patch");
    }
}
