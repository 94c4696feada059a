//! The route table and the tower layers around it.

use crate::core::Core;
use crate::core::error::Code;
use crate::http::login::{LOGIN_TTL, Logins};
use crate::http::{
    ApiError, HttpConfig, api, auth, error, exec, files, linger, login, shortcut, term, uploads,
    web,
};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get, head, post};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

/// Every route as `(method, path)`, in axum's path syntax; the OpenAPI document lists each one
/// (a test holds them together), and building the router refuses a path missing here.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/files/"),
    ("HEAD", "/files/"),
    ("GET", "/files/{*path}"),
    ("HEAD", "/files/{*path}"),
    ("PUT", "/files/{*path}"),
    ("POST", "/files/{*path}"),
    ("DELETE", "/files/{*path}"),
    ("HEAD", "/uploads/{id}"),
    ("PATCH", "/uploads/{id}"),
    ("DELETE", "/uploads/{id}"),
    ("POST", "/api/v1/exec"),
    ("GET", "/api/v1/files"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/transfers"),
    ("GET", "/api/v1/checks"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/term"),
    ("GET", "/assets/{*path}"),
    ("GET", "/api/v1/recordings"),
    ("GET", "/api/v1/recordings/{id}"),
    ("GET", "/term/ws"),
];

/// The paths served without a token: liveness, and the UI's pages and assets (`/` and `/term`
/// redirect to the login page when the browser has no login; assets hold no secrets).
pub const PUBLIC: &[&str] = &[
    "/healthz",
    "/",
    "/login",
    "/logout",
    "/term",
    "/assets/{*path}",
];

/// Whether a request for `path` is served without a token: it is one of [`PUBLIC`], or under
/// one that ends in a wildcard. The router routes such a path to that public route, or to none.
pub fn is_public(path: &str) -> bool {
    PUBLIC.iter().any(|p| match p.strip_suffix("{*path}") {
        Some(prefix) => path.starts_with(prefix),
        None => path == *p,
    })
}

fn at(router: Router<Web>, path: &'static str, methods: MethodRouter<Web>) -> Router<Web> {
    assert!(
        ROUTES.iter().any(|(_, p)| *p == path),
        "route {path} is missing from ROUTES and the OpenAPI document"
    );
    router.route(path, methods)
}

/// Cancelled when the server shuts down; endless answers (event streams) end on it.
#[derive(Clone)]
pub struct Shutdown(pub tokio_util::sync::CancellationToken);

/// What the handlers share: the core and the HTTP transport's own state. Each part is its own
/// `State` (by `FromRef`), so that no request carries copies of them in its extensions.
#[derive(Clone)]
pub struct Web {
    core: Core,
    origins: term::AllowedOrigins,
    logins: Logins,
    shutdown: Shutdown,
}

macro_rules! part_of_web {
    ($($field:ident: $ty:ty),*) => {$(
        impl axum::extract::FromRef<Web> for $ty {
            fn from_ref(web: &Web) -> $ty {
                web.$field.clone()
            }
        }
    )*};
}
part_of_web!(core: Core, origins: term::AllowedOrigins, logins: Logins, shutdown: Shutdown);

/// What a connection hands each request to: the route table inside its layers.
pub trait App:
    tower::Service<
        axum::extract::Request,
        Response = axum::http::Response<Self::Body>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The answers' body.
    type Body: axum::body::HttpBody<Data = bytes::Bytes, Error: Into<axum::BoxError>>
        + Send
        + 'static;
}

impl<S, B> App for S
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::http::Response<B>,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    B: axum::body::HttpBody<Data = bytes::Bytes, Error: Into<axum::BoxError>> + Send + 'static,
{
    type Body = B;
}

/// The whole HTTP application for `core`: the layers wrap the route table directly, with no
/// router around them (one would match every request against no route, then box its future),
/// and the table has plain downloads taken ahead of it (`shortcut::Downloads`).
pub fn router(core: Core, cfg: &HttpConfig, shutdown: Shutdown) -> impl App {
    let web = Web {
        core,
        origins: term::AllowedOrigins(Arc::new(cfg.allowed_origins.clone())),
        logins: Logins::new(LOGIN_TTL, cfg.secure_cookies),
        shutdown,
    };
    // Requests that move files or run commands take as long as they take; the rest are bounded.
    let mut bounded = Router::new();
    for (path, methods) in [
        ("/api/v1/files", get(api::list)),
        ("/api/v1/sessions", get(api::sessions)),
        ("/api/v1/transfers", get(api::transfers)),
        ("/api/v1/checks", get(api::checks)),
        ("/api/v1/audit", get(api::audit)),
        ("/api/v1/openapi.json", get(api::openapi)),
        ("/api/v1/recordings", get(term::recordings)),
        ("/metrics", get(api::metrics)),
    ] {
        bounded = at(bounded, path, methods);
    }
    let bounded = bounded.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        cfg.request_timeout,
    ));
    let mut long = Router::new();
    long = at(long, "/api/v1/exec", post(exec::exec));
    long = at(long, "/api/v1/events", get(api::events));
    long = at(long, "/term/ws", get(term::ws));
    long = at(long, "/api/v1/recordings/{id}", get(term::recording));
    long = at(long, "/files/", get(files::get_root).head(files::get_root));
    // Plain `GET`s and `HEAD`s of this route reach `get_file` through `shortcut::Downloads`,
    // ahead of the table: a layer added here would not apply to them.
    long = at(
        long,
        "/files/{*path}",
        get(files::get_file)
            .head(files::get_file)
            .put(files::put_file)
            .post(uploads::create)
            .delete(files::delete_file),
    );
    long = at(
        long,
        "/uploads/{id}",
        head(uploads::status)
            .patch(uploads::append)
            .delete(uploads::cancel),
    );
    let authed = bounded.merge(long);
    let mut open = Router::new();
    for (path, methods) in [
        ("/healthz", get(api::healthz)),
        // The pages check the login themselves: a browser without one is sent to /login.
        ("/", get(web::index)),
        ("/term", get(web::term)),
        ("/login", get(web::login_page).post(login::login)),
        ("/logout", post(login::logout)),
        ("/assets/{*path}", get(web::asset)),
    ] {
        assert!(
            PUBLIC.contains(&path),
            "{path} is served without a token but not PUBLIC"
        );
        open = at(open, path, methods);
    }
    let open = open.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        cfg.request_timeout,
    ));
    // `Router::layer` wraps every route on its own, so the limit shares one semaphore across
    // them. A request holds its slot until its answer's headers are out; streamed bodies
    // (downloads, NDJSON, events) are bounded by the core's transfer and exec limits instead.
    let slots = Arc::new(Semaphore::new(cfg.max_requests.max(1)));
    let overload = ServiceBuilder::new()
        .layer(error::BusyLayer)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots));
    let inner = authed
        .merge(open)
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
        .with_state(web.clone());
    let inner = shortcut::Downloads::new(web.core.clone(), inner);
    // The layers wrap the whole router once: `Router::layer` would wrap every route on its
    // own, and each request would then clone and box the stack of its route, layer by layer.
    ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        // Outside the concurrency limit: reading a refused body holds no request slot.
        .layer(linger::LingerLayer)
        .layer(overload)
        .layer(tower::util::AndThenLayer::new(
            error::json_errors::<tower_http::limit::ResponseBody<axum::body::Body>>,
        ))
        .layer(RequestBodyLimitLayer::new(
            usize::try_from(cfg.max_body).unwrap_or(usize::MAX),
        ))
        // A body that stops coming (an upload whose client went silent) ends the request,
        // which then drops its temp file and frees its slot.
        .layer(RequestBodyTimeoutLayer::new(cfg.idle_timeout))
        .layer(DefaultBodyLimit::max(16 << 20))
        // Around the whole router rather than each route (`route_layer`), which would box and
        // clone it per request; the public paths pass untouched.
        .layer(auth::RequireTokenLayer::new(web.core, web.logins))
        .service(inner)
}

#[cfg(test)]
mod tests {
    use super::ROUTES;
    use crate::http::api::OPENAPI;

    /// The public paths, and only they, pass without a token (wildcards by prefix).
    #[test]
    fn public_paths() {
        for (_, path) in super::ROUTES {
            let concrete = path.replace("{*path}", "x/y").replace("{id}", "1");
            assert_eq!(
                super::is_public(&concrete),
                super::PUBLIC.contains(path),
                "{path}"
            );
        }
        assert!(!super::is_public("/files/"));
        assert!(!super::is_public("/healthz/"));
        assert!(!super::is_public("/login/../api/v1/sessions"));
        assert!(!super::is_public("//"));
    }

    /// The OpenAPI document and the route table describe the same operations.
    #[test]
    fn openapi_lists_every_route_and_nothing_else() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        let routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.replace("{*", "{")))
            .collect();
        for r in &routed {
            assert!(
                documented.contains(r),
                "{r:?} is routed but not in openapi.json"
            );
        }
        for d in &documented {
            assert!(
                routed.contains(d),
                "{d:?} is in openapi.json but not routed"
            );
        }
    }
}
