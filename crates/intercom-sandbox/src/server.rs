//! The HTTP face: routes, the middleware chain (outage, auth, rate limit, Accept, faults), the
//! listener that can drop a connection without a response, and the handle that starts and stops
//! it all.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::serve::{IncomingStream, Listener};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{FaultPoint, RateLimitHeaders, SandboxConfig};
use crate::error::{ApiError, SandboxError, error_list, json_response};
use crate::outage::{Outage, OutageKind, Outages, Refusal};
use crate::rng::Rng;
use crate::snapshot::{OutageCounters, Snapshot};
use crate::store::{Rules, Store};

/// Entry point of the library: start a sandbox on the current tokio runtime.
pub struct Sandbox;

impl Sandbox {
    /// Bind `config.listen`, serve on a task of the current runtime, and return at once.
    pub async fn start(config: SandboxConfig) -> Result<SandboxHandle, SandboxError> {
        check(&config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| SandboxError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(config));
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(
                SandboxListener(listener),
                app.into_make_service_with_connect_info::<ConnInfo>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "Sandbox server stopped with an error.");
            }
        });
        tracing::info!(%addr, "Intercom sandbox listening.");
        Ok(SandboxHandle {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

fn check(config: &SandboxConfig) -> Result<(), SandboxError> {
    let share = |name: &str, value: f64| {
        if (0.0..=1.0).contains(&value) {
            Ok(())
        } else {
            Err(SandboxError::Config(format!(
                "{name} must be between 0 and 1, not {value}"
            )))
        }
    };
    share("fault error rate", config.faults.error_rate)?;
    share("fault drop rate", config.faults.drop_rate)?;
    share("slow response rate", config.slow.rate)?;
    if config.faults.error_rate + config.faults.drop_rate > 1.0 {
        return Err(SandboxError::Config(
            "fault error rate plus drop rate must not exceed 1".into(),
        ));
    }
    if config.rate_limit == 0 || config.window_secs == 0 {
        return Err(SandboxError::Config(
            "the rate limit and the window must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A running sandbox. Dropping it stops the server too; `shutdown` also waits for it.
pub struct SandboxHandle {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT`, without a trailing slash: the Intercom base URL to use.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token the sandbox accepts.
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    /// Everything held and counted, as `GET /_sandbox/state` serves it.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snapshot()
    }

    /// Begin an outage now: every API request is refused until it ends (by itself after
    /// `outage.length` of real time, or with [`SandboxHandle::end_outage`]). An outage already
    /// under way ends first; this one counts as a new outage.
    pub fn begin_outage(&self, outage: Outage) {
        self.shared.lock().begin_outage(outage);
    }

    /// End the outage under way, if any: the next request is answered normally.
    pub fn end_outage(&self) {
        self.shared.lock().end_outage();
    }

    /// Whether an outage is under way now (one whose length has passed is not).
    pub fn outage_active(&self) -> bool {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        inner
            .outages
            .active(&mut inner.store.counters.outage, Instant::now())
    }

    /// Stop accepting, let requests in flight finish, and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) struct Shared {
    config: SandboxConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    store: Store,
    window: RateWindow,
    rng: Rng,
    outages: Outages,
}

impl Inner {
    /// The snapshot, with an outage whose length has passed ended first.
    fn snapshot(&mut self) -> Snapshot {
        self.outages
            .refresh(&mut self.store.counters.outage, Instant::now());
        self.store.snapshot()
    }

    fn begin_outage(&mut self, outage: Outage) {
        tracing::info!(kind = %outage.kind, length = ?outage.length, "Sandbox outage begins.");
        self.outages
            .begin(outage, &mut self.store.counters.outage, Instant::now());
    }

    fn end_outage(&mut self) {
        self.outages
            .end(&mut self.store.counters.outage, Instant::now());
    }

    /// The outage counters, with an outage whose length has passed ended first.
    fn outage_counters(&mut self) -> OutageCounters {
        self.outages
            .refresh(&mut self.store.counters.outage, Instant::now());
        self.store.counters.outage.clone()
    }
}

/// The current fixed rate-limit window.
struct RateWindow {
    index: u64,
    arrived: u64,
    accepted: u64,
}

impl Shared {
    fn new(config: SandboxConfig) -> Shared {
        let rules = Rules {
            long_strings: config.long_strings,
            event_name_limit: config.event_name_limit,
            search_lag: config.search_lag,
            in_values_limit: config.in_values_limit,
        };
        let rng = Rng::seeded(config.faults.seed);
        let mut store = Store::new(rules);
        let mut outages = Outages::new(config.outage);
        // A scheduled outage after 0 requests begins with the sandbox.
        outages.answered(0, &mut store.counters.outage, Instant::now());
        Shared {
            config,
            inner: Mutex::new(Inner {
                store,
                window: RateWindow {
                    index: 0,
                    arrived: 0,
                    accepted: 0,
                },
                rng,
                outages,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in one handler must not wedge the whole sandbox.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> Duration {
        self.config.clock.now()
    }
}

type AppState = State<Arc<Shared>>;

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/contacts", post(create_contact))
        .route("/contacts/search", post(search_contacts))
        .route("/contacts/{id}", get(get_contact).put(update_contact))
        .route(
            "/contacts/{id}/companies",
            get(contact_companies).post(attach_company),
        )
        .route(
            "/contacts/{id}/companies/{company_id}",
            delete(detach_company),
        )
        .route(
            "/data_attributes",
            get(list_data_attributes).post(create_data_attribute),
        )
        .route("/data_attributes/{id}", put(update_data_attribute))
        .route("/events", post(create_event))
        .route("/companies", get(find_companies).post(upsert_company))
        .route("/companies/{id}", get(get_company))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .layer(middleware::from_fn_with_state(shared.clone(), faults))
        .layer(middleware::from_fn_with_state(shared.clone(), accept))
        .layer(middleware::from_fn_with_state(shared.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .layer(middleware::from_fn_with_state(shared.clone(), outage))
        .layer(middleware::from_fn_with_state(shared.clone(), observe));
    Router::new()
        .route("/_sandbox/state", get(inspect))
        .route(
            "/_sandbox/outage",
            get(outage_state).post(begin_outage).delete(end_outage),
        )
        .merge(api)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Middleware, outermost first.

/// Marks a response whose connection must be closed instead of answered.
#[derive(Debug, Clone, Copy)]
struct DropConnection;

/// Count every API request by endpoint and answer; carry out a dropped connection; begin the
/// scheduled outage once its number of requests has been answered.
async fn observe(State(shared): AppState, request: Request, next: Next) -> Response {
    let endpoint = format!(
        "{} {}",
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or("(unknown route)", MatchedPath::as_str)
    );
    let version = request
        .headers()
        .get("intercom-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let connection = request
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|info| info.0.clone());
    let response = next.run(request).await;
    let dropped = response.extensions().get::<DropConnection>().is_some();
    let answer = if dropped {
        "dropped".to_owned()
    } else {
        response.status().as_u16().to_string()
    };
    {
        let mut inner = shared.lock();
        let counters = &mut inner.store.counters;
        counters.total_requests += 1;
        *counters
            .requests
            .entry(endpoint)
            .or_default()
            .entry(answer)
            .or_default() += 1;
        *counters.intercom_versions.entry(version).or_default() += 1;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            counters.rate_limited += 1;
        }
        let answered = counters.total_requests;
        let inner = &mut *inner;
        inner
            .outages
            .answered(answered, &mut inner.store.counters.outage, Instant::now());
    }
    if dropped && let Some(connection) = connection {
        tracing::debug!(peer = %connection.peer, "Dropping the connection without a response.");
        connection.kill.store(true, Ordering::SeqCst);
    }
    response
}

/// During an outage, refuse the request before anything else looks at it: a load-balancer
/// status without rate-limit headers, or a dropped connection. Nothing is applied and no budget
/// is spent.
async fn outage(State(shared): AppState, request: Request, next: Next) -> Response {
    let refusal = {
        let mut inner = shared.lock();
        let inner = &mut *inner;
        inner
            .outages
            .refuse(&mut inner.store.counters.outage, Instant::now())
    };
    match refusal {
        None => next.run(request).await,
        Some(Refusal::Status(status)) => outage_response(status),
        Some(Refusal::Drop) => dropped_response(),
    }
}

/// `Authorization: Bearer <token>` or 401, with no rate-limit headers.
async fn authenticate(State(shared): AppState, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", shared.config.token);
    let authorised = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorised {
        return error_list(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Access Token Invalid",
        );
    }
    next.run(request).await
}

/// Fixed windows aligned to multiples of `window_secs`; 429 once the budget is spent.
async fn rate_limit(State(shared): AppState, request: Request, next: Next) -> Response {
    let limit = u64::from(shared.config.rate_limit);
    let window_secs = shared.config.window_secs;
    let index = shared.now().as_secs() / window_secs;
    let reset = (index + 1) * window_secs;
    let admitted = {
        let mut inner = shared.lock();
        let inner = &mut *inner;
        if inner.window.index != index {
            inner.window = RateWindow {
                index,
                arrived: 0,
                accepted: 0,
            };
        }
        inner.window.arrived += 1;
        let counters = &mut inner.store.counters;
        counters.max_requests_in_window = counters.max_requests_in_window.max(inner.window.arrived);
        if inner.window.accepted < limit {
            inner.window.accepted += 1;
            Some(limit - inner.window.accepted)
        } else {
            None
        }
    };
    let (mut response, remaining) = match admitted {
        Some(remaining) => (next.run(request).await, remaining),
        None => (
            error_list(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                &format!("Exceeded rate limit of {limit} in {window_secs}_seconds"),
            ),
            0,
        ),
    };
    if shared.config.rate_limit_headers == RateLimitHeaders::Announce {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
    response
}

/// 406 unless the client accepts `application/json`; 400 for an unknown `Intercom-Version`.
async fn accept(request: Request, next: Next) -> Response {
    if !accepts_json(request.headers()) {
        return error_list(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_not_acceptable",
            "The Accept header should send a media type of application/json",
        );
    }
    if let Some(version) = request.headers().get("intercom-version") {
        let known = version.to_str().is_ok_and(known_version);
        if !known {
            return error_list(
                StatusCode::BAD_REQUEST,
                "intercom_version_invalid",
                "The requested version is not valid",
            );
        }
    }
    next.run(request).await
}

/// Whether an `Accept` header names `application/json` (a bare `*/*` does not count).
fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let media = media.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
        })
}

fn known_version(version: &str) -> bool {
    if version == "Unstable" {
        return true;
    }
    match version.split_once('.') {
        Some(("1", minor)) => matches!(minor, "0" | "1" | "2" | "3" | "4"),
        Some(("2", minor)) => {
            minor.parse::<u32>().is_ok_and(|m| m <= 16) && !minor.starts_with('+')
        }
        _ => false,
    }
}

/// What the generator decided for one request.
enum Fault {
    None,
    Status(StatusCode),
    Drop,
}

/// Latency, slow responses, injected error statuses and dropped connections.
async fn faults(State(shared): AppState, request: Request, next: Next) -> Response {
    let config = &shared.config;
    let (fault, after_effect, slow) = {
        let mut inner = shared.lock();
        let rng = &mut inner.rng;
        // Always four draws a request, so one setting does not shift another's sequence.
        let (kind, pick, point, slow) = (
            rng.next_f64(),
            rng.next_u64(),
            rng.next_f64(),
            rng.next_f64(),
        );
        let fault = if kind < config.faults.drop_rate {
            Fault::Drop
        } else if kind < config.faults.drop_rate + config.faults.error_rate {
            const STATUSES: [StatusCode; 5] = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
                StatusCode::REQUEST_TIMEOUT,
            ];
            Fault::Status(STATUSES[(pick % STATUSES.len() as u64) as usize])
        } else {
            Fault::None
        };
        let after_effect = match config.faults.point {
            FaultPoint::BeforeEffect => false,
            FaultPoint::AfterEffect => true,
            FaultPoint::Either => point < 0.5,
        };
        (fault, after_effect, slow < config.slow.rate)
    };
    let mut delay = config.latency;
    if slow {
        delay += config.slow.delay;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if matches!(fault, Fault::None) {
        return next.run(request).await;
    }
    if after_effect {
        // The effect happens; only the answer is lost.
        let _ = next.run(request).await;
    }
    let mut inner = shared.lock();
    let counters = &mut inner.store.counters;
    if after_effect {
        counters.lost_responses += 1;
    }
    match fault {
        Fault::Drop => {
            counters.connections_dropped += 1;
            dropped_response()
        }
        Fault::Status(status) => {
            counters.faults_injected += 1;
            fault_response(status)
        }
        Fault::None => unreachable!("handled above"),
    }
}

/// A response that `observe` turns into a connection closed without any response.
fn dropped_response() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnection);
    response
}

/// Intercom answers 500/503/408 with `error.list`; 502/504 come from its load balancers as
/// HTML, which clients must survive too.
fn fault_response(status: StatusCode) -> Response {
    match status {
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => load_balancer_page(status),
        StatusCode::SERVICE_UNAVAILABLE => error_list(
            status,
            "service_unavailable",
            "Sorry, the API service is temporarily unavailable",
        ),
        StatusCode::REQUEST_TIMEOUT => error_list(status, "request_timeout", "Request Timeout"),
        _ => error_list(status, "server_error", "Server Error"),
    }
}

/// During an outage nothing behind the load balancer answers: 502 and 504 as its HTML page, 503
/// as plain text. Never `error.list`, never rate-limit headers.
fn outage_response(status: StatusCode) -> Response {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let mut response = (status, "503 Service Temporarily Unavailable\n").into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    } else {
        load_balancer_page(status)
    }
}

/// The bare HTML error page a load balancer sends.
fn load_balancer_page(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} \
         {reason}</h1></center></body></html>\n",
        code = status.as_u16()
    );
    let mut response = (status, html).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

// ---------------------------------------------------------------------------------------------
// Handlers.

fn parse(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::invalid_json())
}

fn ok(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => error.into_response(),
    }
}

async fn create_contact(State(shared): AppState, body: Bytes) -> Response {
    let now = shared.now();
    ok(parse(&body).and_then(|body| shared.lock().store.create_contact(&body, now)))
}

async fn update_contact(State(shared): AppState, Path(id): Path<String>, body: Bytes) -> Response {
    let now = shared.now().as_secs();
    ok(parse(&body).and_then(|body| shared.lock().store.update_contact(&id, &body, now)))
}

async fn get_contact(State(shared): AppState, Path(id): Path<String>) -> Response {
    ok(shared.lock().store.get_contact(&id))
}

async fn search_contacts(State(shared): AppState, body: Bytes) -> Response {
    let now = shared.now();
    ok(parse(&body).and_then(|body| shared.lock().store.search_contacts(&body, now)))
}

async fn contact_companies(State(shared): AppState, Path(id): Path<String>) -> Response {
    ok(shared.lock().store.contact_companies(&id))
}

async fn attach_company(State(shared): AppState, Path(id): Path<String>, body: Bytes) -> Response {
    ok(parse(&body).and_then(|body| shared.lock().store.attach_company(&id, &body)))
}

async fn detach_company(
    State(shared): AppState,
    Path((id, company_id)): Path<(String, String)>,
) -> Response {
    ok(shared.lock().store.detach_company(&id, &company_id))
}

async fn list_data_attributes(
    State(shared): AppState,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let include_archived = query.get("include_archived").is_some_and(|v| v == "true");
    ok(shared
        .lock()
        .store
        .list_data_attributes(query.get("model").map(String::as_str), include_archived))
}

async fn create_data_attribute(State(shared): AppState, body: Bytes) -> Response {
    let now = shared.now().as_secs();
    ok(parse(&body).and_then(|body| shared.lock().store.create_data_attribute(&body, now)))
}

async fn update_data_attribute(
    State(shared): AppState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let now = shared.now().as_secs();
    ok(parse(&body).and_then(|body| shared.lock().store.update_data_attribute(&id, &body, now)))
}

async fn create_event(State(shared): AppState, body: Bytes) -> Response {
    match parse(&body).and_then(|body| shared.lock().store.create_event(&body)) {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn upsert_company(State(shared): AppState, body: Bytes) -> Response {
    let now = shared.now().as_secs();
    ok(parse(&body).and_then(|body| shared.lock().store.upsert_company(&body, now)))
}

async fn find_companies(
    State(shared): AppState,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    ok(shared.lock().store.find_companies(
        query.get("company_id").map(String::as_str),
        query.get("name").map(String::as_str),
    ))
}

async fn get_company(State(shared): AppState, Path(id): Path<String>) -> Response {
    ok(shared.lock().store.get_company(&id))
}

async fn unknown_route() -> Response {
    ApiError::not_found("Resource Not Found").into_response()
}

async fn inspect(State(shared): AppState) -> Response {
    let snapshot = shared.lock().snapshot();
    serialised(&snapshot)
}

/// `200` with `value` as JSON.
fn serialised(value: &impl serde::Serialize) -> Response {
    match serde_json::to_value(value) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => error_list(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &error.to_string(),
        ),
    }
}

/// The body of `POST /_sandbox/outage`; an empty body is `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageRequest {
    /// `errors` (the default), `drops` or `mixed`.
    #[serde(default)]
    kind: Option<OutageKind>,
    /// Seconds of real time until the outage ends by itself; absent: until `DELETE`.
    #[serde(default)]
    secs: Option<f64>,
}

/// `GET /_sandbox/outage`: the outage counters, as in the snapshot.
async fn outage_state(State(shared): AppState) -> Response {
    let counters = shared.lock().outage_counters();
    serialised(&counters)
}

/// `POST /_sandbox/outage`: begin an outage now; answers with the outage counters.
async fn begin_outage(State(shared): AppState, body: Bytes) -> Response {
    let request: OutageRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OutageRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(error) => {
                return ApiError::invalid(format!("bad outage: {error}")).into_response();
            }
        }
    };
    let length = match request.secs {
        None => None,
        Some(secs) => match Duration::try_from_secs_f64(secs) {
            Ok(length) if !length.is_zero() => Some(length),
            _ => {
                return ApiError::invalid(format!(
                    "secs must be a positive number of seconds, not {secs}"
                ))
                .into_response();
            }
        },
    };
    let outage = Outage {
        kind: request.kind.unwrap_or(OutageKind::Errors),
        length,
    };
    let counters = {
        let mut inner = shared.lock();
        inner.begin_outage(outage);
        inner.outage_counters()
    };
    serialised(&counters)
}

/// `DELETE /_sandbox/outage`: end the outage under way, if any; answers with the counters.
async fn end_outage(State(shared): AppState) -> Response {
    let counters = {
        let mut inner = shared.lock();
        inner.end_outage();
        inner.outage_counters()
    };
    serialised(&counters)
}

// ---------------------------------------------------------------------------------------------
// A listener whose connections can be closed from a handler without writing a response.

/// What a handler learns about its connection: the peer, and the switch that kills it.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    peer: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, SandboxListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, SandboxListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub(crate) struct SandboxListener(TcpListener);

impl Listener for SandboxListener {
    type Io = KillableStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    let io = KillableStream {
                        inner: stream,
                        kill: kill.clone(),
                    };
                    return (io, ConnInfo { peer, kill });
                }
                Err(error) => {
                    tracing::warn!(%error, "Sandbox could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnInfo {
            peer: self.0.local_addr()?,
            kill: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A TCP stream that fails every read and write once killed, so hyper abandons the
/// connection and closes the socket before any byte of the response is sent.
pub(crate) struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableStream {
    fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "sandbox dropped the connection",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{accepts_json, known_version};
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn accept_header_must_name_json() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(value));
            accepts_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("text/html, application/json;q=0.9"));
        assert!(!with("*/*"));
        assert!(!with("text/html"));
        assert!(!accepts_json(&HeaderMap::new()));
    }

    #[test]
    fn intercom_versions() {
        for good in ["2.14", "2.16", "1.0", "Unstable", "2.0"] {
            assert!(known_version(good), "{good}");
        }
        for bad in ["2.17", "3.0", "latest", "2", "1.9"] {
            assert!(!known_version(bad), "{bad}");
        }
    }
}
