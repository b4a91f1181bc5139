//! Watch: store change streams turned into Kubernetes watch events, filtered by selectors
//! (an object leaving the selection is DELETED for that watcher), with bookmarks, timeouts,
//! Table rendering and 410 Expired for compacted revisions.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{header, StatusCode};
use kinit_store::{KeyValue, ListOptions, StoreError, WatchEvent};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::objects::{decode, set_resource_version};
use crate::paging::ListParams;
use crate::registry::ResourceDef;
use crate::response::{present, Output};
use crate::state::State;
use crate::tables;

/// What a watcher asked for.
pub struct WatchRequest {
    /// Resource.
    pub def: &'static ResourceDef,
    /// Namespace ("" = all).
    pub namespace: String,
    /// Selectors and resourceVersion.
    pub params: ListParams,
    /// Send BOOKMARK events.
    pub bookmarks: bool,
    /// End the stream after this long.
    pub timeout: Duration,
    /// Plain objects or Table rows.
    pub output: Output,
}

/// The event a watcher sees for one store change, if any (selection-aware).
pub fn translate(
    event: &WatchEvent,
    params: &ListParams,
) -> Result<Option<(&'static str, Value)>, ApiError> {
    match event {
        WatchEvent::Put { kv, prev } => {
            let new = decode(kv)?;
            let new_matches = params.matches(&new);
            let old_matches = match prev {
                Some(p) => params.matches(&decode(p)?),
                None => false,
            };
            Ok(match (old_matches, new_matches) {
                (false, true) => Some(("ADDED", new)),
                (true, true) => Some(("MODIFIED", new)),
                (true, false) => {
                    // Leaving the selection: the old state, at the new revision.
                    let mut old = decode(prev.as_ref().expect("old matched"))?;
                    set_resource_version(&mut old, kv.mod_revision);
                    Some(("DELETED", old))
                }
                (false, false) => None,
            })
        }
        WatchEvent::Delete { prev, revision } => {
            let mut old = decode(prev)?;
            if !params.matches(&old) {
                return Ok(None);
            }
            set_resource_version(&mut old, *revision);
            Ok(Some(("DELETED", old)))
        }
        WatchEvent::Progress { .. } => Ok(None),
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", &e.to_status())
}

struct Renderer {
    def: &'static ResourceDef,
    output: Output,
    sent_columns: bool,
}

impl Renderer {
    fn render(&mut self, object: Value) -> Value {
        let object = present(self.def, object);
        match &self.output {
            Output::Object => object,
            Output::Metadata => tables::partial_object_metadata(&object),
            Output::Table(include) => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let with_columns = !self.sent_columns;
                self.sent_columns = true;
                tables::build_table(
                    self.def.printer,
                    &[object],
                    &tables::TableOptions::single(&rv, include, with_columns),
                    OffsetDateTime::now_utc(),
                )
            }
        }
    }

    fn bookmark(&self, revision: i64) -> Value {
        json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": {"resourceVersion": revision.to_string()}})
    }
}

fn matches_key(kv: &KeyValue, pinned: Option<&str>) -> bool {
    pinned.is_none_or(|n| kv.key.ends_with(&format!("/{n}")))
}

/// Starts a watch and answers with the streaming response.
pub async fn watch(state: Arc<State>, req: WatchRequest) -> Result<Response, ApiError> {
    let def = req.def;
    let prefix = def.prefix(if req.namespace.is_empty() {
        None
    } else {
        Some(&req.namespace)
    });
    let rv = req.params.resource_version.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut renderer = Renderer {
        def,
        output: req.output.clone(),
        sent_columns: false,
    };
    let pinned = req.params.fields.pinned_name().map(String::from);

    // Initial state: "" or "0" means "send the current objects as ADDED first".
    let mut initial = Vec::new();
    let start_revision = if rv.is_empty() || rv == "0" {
        let listed = state
            .objects
            .list_range(def, &prefix, &ListOptions::default(), false)
            .await?;
        for kv in &listed.items {
            if !matches_key(kv, pinned.as_deref()) {
                continue;
            }
            let obj = decode(kv)?;
            if req.params.matches(&obj) {
                initial.push(obj);
            }
        }
        listed.revision
    } else {
        rv.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("resourceVersion: invalid value {rv:?}")))?
    };

    let stream = match state.objects.watch(&prefix, start_revision).await {
        Ok(s) => Some(s),
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let e = ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            ));
            let _ = tx.try_send(error_line(&e));
            None
        }
        Err(e) => return Err(ApiError::from_store(e, def.group, def.resource, "")),
    };

    let tx_task = tx;
    let bookmarks = req.bookmarks;
    let timeout = req.timeout;
    let params = req.params;
    tokio::spawn(async move {
        for obj in initial {
            let out = renderer.render(obj);
            if tx_task.send(line("ADDED", &out)).await.is_err() {
                return;
            }
        }
        let Some(mut stream) = stream else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx_task.closed() => return,
                next = stream.next() => {
                    let event = match next {
                        None => return,
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            let err = match e {
                                StoreError::Compacted { requested, compacted } => ApiError::expired(format!("too old resource version: {requested} ({compacted})")),
                                other => ApiError::expired(format!("watch ended: {other}; list again and restart the watch")),
                            };
                            let _ = tx_task.send(error_line(&err)).await;
                            return;
                        }
                    };
                    if let WatchEvent::Progress { revision } = event {
                        if bookmarks {
                            let b = renderer.bookmark(revision);
                            if tx_task.send(line("BOOKMARK", &b)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    let key_ok = match &event {
                        WatchEvent::Put { kv, .. } => matches_key(kv, pinned.as_deref()),
                        WatchEvent::Delete { prev, .. } => matches_key(prev, pinned.as_deref()),
                        WatchEvent::Progress { .. } => true,
                    };
                    if !key_ok {
                        continue;
                    }
                    match translate(&event, &params) {
                        Ok(Some((kind, obj))) => {
                            let out = renderer.render(obj);
                            if tx_task.send(line(kind, &out)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx_task.send(error_line(&e)).await;
                            return;
                        }
                    }
                }
            }
        }
    });

    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Query;

    fn kv(key: &str, rev: i64, labels: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: serde_json::to_vec(
                &json!({"kind": "Pod", "metadata": {"name": "p", "labels": labels}}),
            )
            .unwrap(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn params(sel: &str) -> ListParams {
        let def = crate::registry::find("", "v1", "pods").unwrap();
        ListParams::parse(
            def,
            &Query::parse(Some(&format!("labelSelector={sel}"))).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn selection_changes_become_added_and_deleted() {
        let p = params("app%3Dweb");
        let in_sel = kv("/registry/pods/default/p", 5, json!({"app": "web"}));
        let out_sel = kv("/registry/pods/default/p", 6, json!({"app": "db"}));
        // enters the selection
        let (t, _) = translate(
            &WatchEvent::Put {
                kv: in_sel.clone(),
                prev: Some(out_sel.clone()),
            },
            &p,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t, "ADDED");
        // stays
        let (t, _) = translate(
            &WatchEvent::Put {
                kv: in_sel.clone(),
                prev: Some(in_sel.clone()),
            },
            &p,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t, "MODIFIED");
        // leaves: DELETED with the old object at the new revision
        let (t, o) = translate(
            &WatchEvent::Put {
                kv: out_sel.clone(),
                prev: Some(in_sel.clone()),
            },
            &p,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t, "DELETED");
        assert_eq!(o["metadata"]["labels"]["app"], "web");
        assert_eq!(o["metadata"]["resourceVersion"], "6");
        // never in the selection
        assert!(translate(
            &WatchEvent::Put {
                kv: out_sel.clone(),
                prev: None
            },
            &p
        )
        .unwrap()
        .is_none());
        // deletes of non-matching objects are invisible
        assert!(translate(
            &WatchEvent::Delete {
                prev: out_sel,
                revision: 9
            },
            &p
        )
        .unwrap()
        .is_none());
        let (t, o) = translate(
            &WatchEvent::Delete {
                prev: in_sel,
                revision: 9,
            },
            &p,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t, o["metadata"]["resourceVersion"].as_str()),
            ("DELETED", Some("9"))
        );
    }

    #[test]
    fn table_watch_sends_columns_once() {
        let def = crate::registry::find("", "v1", "pods").unwrap();
        let mut r = Renderer {
            def,
            output: Output::Table("Metadata".into()),
            sent_columns: false,
        };
        let a = r.render(json!({"metadata": {"name": "a", "resourceVersion": "3"}}));
        let b = r.render(json!({"metadata": {"name": "b", "resourceVersion": "4"}}));
        assert!(!a["columnDefinitions"].as_array().unwrap().is_empty());
        assert!(b["columnDefinitions"].as_array().unwrap().is_empty());
        assert_eq!(b["rows"][0]["cells"][0], "b");
        assert_eq!(r.bookmark(7)["metadata"]["resourceVersion"], "7");
    }
}
