//! List and watch options (selectors, paging, resourceVersion) and reading one page of a
//! list with continue tokens.

use base64::Engine;
use kinit_store::ListOptions;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::objects::{decode, Objects};
use crate::registry::ResourceDef;
use crate::request::Query;
use crate::selectors::{FieldSelector, LabelSelector};

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
    objects: &Objects,
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
                    let current = objects.current_revision(def).await?;
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
        let options = ListOptions {
            limit: batch,
            start_after: start_after.clone(),
            revision,
        };
        let res = objects
            .list_range(def, &prefix, &options, params.continue_token.is_some())
            .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_roundtrip() {
        let t = encode_continue(42, "/registry/pods/default/web-3");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/pods/default/web-3".to_string())
        );
        assert_eq!(decode_continue("garbage!").unwrap_err().code, 400);
    }
}
