//! Parsing requests: the path into a resource target, the query string, the verb, and body
//! decoding by content type.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

use crate::error::ApiError;
use crate::protobuf;
use crate::registry::{self, ResourceDef};

/// Query parameters, in order (repeated keys allowed).
#[derive(Debug, Clone, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        match raw {
            None | Some("") => Ok(Query::default()),
            Some(q) => serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .map(Query)
                .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}"))),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key=true` / `key=1` (present without value counts as true).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | ""))
    }

    /// Whether `dryRun=All` is set; other values are rejected like Kubernetes does.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        let mut dry = false;
        for (k, v) in &self.0 {
            if k == "dryRun" {
                if v == "All" {
                    dry = true;
                } else if !v.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "dryRun: Unsupported value: \"{v}\": supported values: \"All\""
                    )));
                }
            }
        }
        Ok(dry)
    }
}

/// A request for a resource, resolved against the registry.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub def: &'static ResourceDef,
    /// Namespace from the path ("" when none).
    pub namespace: String,
    /// Object name from the path ("" for collections).
    pub name: String,
    /// Subresource ("" when none).
    pub subresource: String,
    /// Legacy `/watch/` prefix used.
    pub watch_prefix: bool,
}

/// What a path names.
#[derive(Debug, Clone)]
pub enum PathKind {
    /// A resource request.
    Resource(Target),
    /// Discovery, version, OpenAPI and other non-resource paths.
    NonResource,
}

/// Resolves `/api/...` and `/apis/...` paths; anything else is a non-resource path.
pub fn parse_path(path: &str) -> Result<PathKind, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(PathKind::NonResource),
    };
    let not_found = || ApiError::path_not_found(path);
    let (watch_prefix, rest) = match rest {
        ["watch", r @ ..] if !r.is_empty() => (true, r),
        r => (false, r),
    };
    // /namespaces/<ns>/<resource>[/<name>[/<sub>]]
    if let ["namespaces", ns, res, tail @ ..] = rest {
        if let Some(def) = registry::find(group, version, res).filter(|d| d.namespaced) {
            let (name, sub) = match tail {
                [] => ("", ""),
                [n] => (*n, ""),
                [n, s] => (*n, *s),
                _ => return Err(not_found()),
            };
            return Ok(PathKind::Resource(Target {
                def,
                namespace: ns.to_string(),
                name: name.to_string(),
                subresource: sub.to_string(),
                watch_prefix,
            }));
        }
    }
    let (res, name, sub) = match rest {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s] => (*r, *n, *s),
        _ => return Err(not_found()),
    };
    let def = registry::find(group, version, res).ok_or_else(not_found)?;
    if def.namespaced && !name.is_empty() {
        return Err(not_found());
    }
    Ok(PathKind::Resource(Target {
        def,
        namespace: String::new(),
        name: name.to_string(),
        subresource: sub.to_string(),
        watch_prefix,
    }))
}

/// The Kubernetes verb of a resource request.
pub fn verb(method: &Method, target: &Target, query: &Query) -> Result<&'static str, ApiError> {
    let watch = target.watch_prefix || query.flag("watch");
    Ok(match *method {
        Method::GET | Method::HEAD => {
            if watch && target.subresource.is_empty() {
                "watch"
            } else if target.name.is_empty() {
                "list"
            } else {
                "get"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => {
            if target.name.is_empty() {
                "deletecollection"
            } else {
                "delete"
            }
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "method {method} is not supported"
            )))
        }
    })
}

/// The media type of a request (lower-case, without parameters).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a request body (JSON, YAML or Kubernetes protobuf) into JSON.
pub fn decode_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send the object as JSON",
        ));
    }
    let ct = content_type(headers);
    match ct.as_str() {
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body),
        "application/yaml" | "application/apply-patch+yaml" | "application/x-yaml" | "text/yaml" => {
            serde_yaml::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        "application/json" | "" | "*/*" | "application/json-patch+json" | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}"))),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}); accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(p: &str) -> Target {
        match parse_path(p).unwrap() {
            PathKind::Resource(t) => t,
            PathKind::NonResource => panic!("{p} is not a resource path"),
        }
    }

    #[test]
    fn parses_resource_paths() {
        let t = target("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(
            (
                t.def.resource,
                t.namespace.as_str(),
                t.name.as_str(),
                t.subresource.as_str()
            ),
            ("pods", "default", "web", "log")
        );
        let t = target("/api/v1/namespaces/kube-system");
        assert_eq!(
            (t.def.resource, t.name.as_str()),
            ("namespaces", "kube-system")
        );
        let t = target("/api/v1/namespaces/dev/finalize");
        assert_eq!(
            (t.def.resource, t.name.as_str(), t.subresource.as_str()),
            ("namespaces", "dev", "finalize")
        );
        let t = target("/apis/apps/v1/deployments");
        assert_eq!((t.def.resource, t.namespace.as_str()), ("deployments", ""));
        let t = target("/api/v1/watch/namespaces/default/pods");
        assert!(t.watch_prefix);
        assert!(matches!(
            parse_path("/apis").unwrap(),
            PathKind::NonResource
        ));
        assert!(matches!(
            parse_path("/api/v1").unwrap(),
            PathKind::NonResource
        ));
        assert!(parse_path("/api/v1/bogus").is_err());
        assert!(parse_path("/api/v1/pods/name-without-namespace").is_err());
    }

    #[test]
    fn verbs() {
        let q = Query::parse(Some("watch=true&resourceVersion=5")).unwrap();
        let t = target("/api/v1/pods");
        assert_eq!(verb(&Method::GET, &t, &q).unwrap(), "watch");
        assert_eq!(verb(&Method::GET, &t, &Query::default()).unwrap(), "list");
        assert_eq!(
            verb(&Method::DELETE, &t, &Query::default()).unwrap(),
            "deletecollection"
        );
        assert_eq!(q.get("resourceVersion"), Some("5"));
        assert!(Query::parse(Some("dryRun=Some"))
            .unwrap()
            .dry_run()
            .is_err());
        assert!(Query::parse(Some("dryRun=All")).unwrap().dry_run().unwrap());
    }

    #[test]
    fn body_decoding() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "application/yaml".parse().unwrap(),
        );
        let v = decode_body(&h, &Bytes::from_static(b"kind: ConfigMap\ndata:\n  a: b\n")).unwrap();
        assert_eq!(v["data"]["a"], "b");
        h.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            decode_body(&h, &Bytes::from_static(b"x")).unwrap_err().code,
            415
        );
    }
}
