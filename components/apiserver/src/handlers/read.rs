//! The read verbs: get, list and watch of stored resources.

use std::time::Duration;

use axum::response::Response;
use http::StatusCode;

use crate::error::ApiError;
use crate::paging::{list_page, ListParams};
use crate::response::{json_response, list_output, object_output, output_kind};
use crate::selectors::FieldRequirement;
use crate::state::Ctx;
use crate::watch::{self, WatchRequest};

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

/// LIST.
pub async fn list(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let def = ctx.def();
    let params = ListParams::parse(def, ctx.query)?;
    let page = list_page(&ctx.state.objects, def, &ctx.target.namespace, &params).await?;
    let body = list_output(
        def,
        page.items,
        &page.revision.to_string(),
        page.continue_token.as_deref(),
        page.remaining,
        &output_kind(ctx.headers, ctx.query),
    );
    Ok(json_response(StatusCode::OK, &body))
}

/// WATCH of a collection, or of one object (`GET .../pods/NAME?watch=true`).
pub async fn watch(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let def = ctx.def();
    let target = ctx.target;
    let mut params = ListParams::parse(def, ctx.query)?;
    if !target.name.is_empty() {
        // A watch pinned to one object.
        params.fields.requirements.push(FieldRequirement {
            field: "metadata.name".into(),
            value: target.name.clone(),
            negate: false,
        });
    }
    let timeout = ctx
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    watch::watch(
        ctx.state.clone(),
        WatchRequest {
            def,
            namespace: target.namespace.clone(),
            params,
            bookmarks: ctx.query.flag("allowWatchBookmarks"),
            timeout,
            output: output_kind(ctx.headers, ctx.query),
        },
    )
    .await
}
