//! `/`, `/channels/{name}`, `/assets/{file}`: the web console's pages.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use speeddata_api::ErrorBody;

use super::{error, AppState};

#[utoipa::path(get, path = "/", tag = "console",
    responses((status = 200, description = "The web console: the fleet", content_type = "text/html", body = String)))]
pub(super) async fn fleet_page() -> Response {
    crate::console::fleet_page()
}

#[utoipa::path(get, path = "/channels/{name}", tag = "console", params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The web console: one channel", content_type = "text/html", body = String)))]
pub(super) async fn channel_page(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    crate::console::channel_page(s.fleet.get(&name).is_some())
}

#[utoipa::path(get, path = "/assets/{file}", tag = "console", params(("file" = String, Path, description = "A script or style sheet of the console")),
    responses((status = 200, description = "The asset"), (status = 404, description = "No such asset", body = ErrorBody)))]
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    crate::console::asset(&file)
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, format!("no asset {file:?}")))
}
