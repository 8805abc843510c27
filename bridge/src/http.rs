//! HTTP endpoints: the Twilio webhooks, the Media Streams upgrade, health, readiness and metrics.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use proto::redact::Masked;
use proto::twilio::is_sid;
use proto::twiml::{self, ConnectStream, DialSip};
use rand::RngCore;
use secrecy::ExposeSecret;


use crate::config::{Config, Mode};
use crate::livekit::{room_name, LiveKit};
use crate::metrics::Metrics;
use crate::registry::{CallInfo, Refusal, Registry};
use crate::shared_state::SharedState;
use crate::twilio_rest::TwilioRest;

/// How long a stream reservation (and its token) lives between `/incoming-call` and `start`.
pub const STREAM_TOKEN_TTL_SECS: u64 = 30;
/// Twilio sends 20 ms frames of ~300 bytes; anything near this is not Twilio.
const MAX_WS_MESSAGE: usize = 64 * 1024;
/// Twilio's webhook bodies are a few hundred bytes of form fields.
const MAX_WEBHOOK_BODY: usize = 64 * 1024;

pub struct App {
    pub cfg: Config,
    pub registry: Registry,
    pub metrics: Metrics,
    pub livekit: LiveKit,
    pub twilio: TwilioRest,
    /// Signs stream tokens; the same on every replica (see [`Config::stream_token_key`]).
    pub stream_secret: [u8; 32],
    /// One-time webhooks and streams across replicas.
    pub shared: SharedState,
    /// Outbound calls this replica owns, for their callbacks and their stream's hand-over.
    pub outbound: crate::outbound::OutboundCalls,
}

impl App {
    /// Connects to the shared state (Redis, when configured) and builds the app.
    pub async fn new(cfg: Config) -> anyhow::Result<Arc<App>> {
        let shared = SharedState::connect(cfg.redis_url.as_ref().map(|u| u.expose_secret())).await?;
        Ok(Arc::new(App {
            registry: Registry::new(cfg.max_calls, std::time::Duration::from_secs(STREAM_TOKEN_TTL_SECS)),
            metrics: Metrics::new(),
            livekit: LiveKit::new(&cfg),
            twilio: TwilioRest::new(&cfg.twilio_api_base, &cfg.twilio_account_sid, cfg.twilio_token().unwrap_or("")),
            stream_secret: cfg.stream_token_key(),
            shared,
            outbound: Default::default(),
            cfg,
        }))
    }

    /// Checks `X-Twilio-Signature` on a form POST against `PUBLIC_URL` + the request path.
    fn form_signed(&self, uri: &Uri, headers: &HeaderMap, params: &[(String, String)]) -> bool {
        let Some(token) = self.cfg.twilio_token() else { return self.cfg.insecure_no_signature };
        let url = self.cfg.http_url(uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path()));
        let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
        proto::signature::validate_form(token, &url, params, sig)
    }

    fn ws_signed(&self, headers: &HeaderMap) -> bool {
        let Some(token) = self.cfg.twilio_token() else { return self.cfg.insecure_no_signature };
        let sig = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
        proto::signature::validate_websocket(token, &self.cfg.stream_url(), sig)
    }

    /// What a caller hears when nobody can take the call: `FALLBACK_URL` if set, else
    /// `FALLBACK_MESSAGE`, then the call ends.
    pub fn fallback_twiml(&self) -> String {
        match &self.cfg.fallback_url {
            Some(url) => twiml::redirect(url),
            None => twiml::busy(&self.cfg.fallback_message),
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    // CreateSIPParticipant with wait_until_answered waits for the callee (LiveKit allows 80 s;
    // a ring may last up to Twilio's 10 minutes).
    let twirp = Router::new()
        .route("/twirp/livekit.SIP/CreateSIPParticipant", post(create_sip_participant))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            crate::outbound::MAX_RINGING + std::time::Duration::from_secs(60),
        ));
    Router::new()
        .route("/incoming-call", post(incoming_call))
        .route("/call-status", post(call_status))
        .route("/outbound-call", post(outbound_call))
        .route("/outbound-status", post(outbound_status))
        .route("/outbound-amd", post(outbound_amd))
        .route("/media-stream", get(media_stream))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            app.cfg.http_request_timeout,
        ))
        .merge(twirp)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BODY))
        .with_state(app)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

async fn incoming_call(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        app.metrics.error("bad_request");
        return (StatusCode::BAD_REQUEST, "body is not form-encoded").into_response();
    };
    if !app.form_signed(&uri, &headers, &params) {
        app.metrics.error("signature_invalid");
        tracing::warn!(path = "/incoming-call", "refused: bad X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature").into_response();
    }
    let info = CallInfo::inbound(param(&params, "CallSid"), param(&params, "AccountSid"), param(&params, "From"), param(&params, "To"));
    if !is_sid(&info.call_sid, "CA") {
        app.metrics.error("bad_request");
        return (StatusCode::BAD_REQUEST, "CallSid missing or malformed").into_response();
    }
    let span = tracing::info_span!("call", call_sid = %info.call_sid);
    let _g = span.enter();

    if app.cfg.mode == Mode::Sip {
        return sip_answer(&app.cfg, &info);
    }

    let mut nonce_bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce_bytes);
    let nonce: String = nonce_bytes.iter().map(|b| format!("{b:02x}")).collect();
    match app.registry.admit(info.clone(), nonce.clone(), Instant::now()) {
        Ok(()) => {}
        Err(Refusal::Replay) => {
            // A captured webhook played again must not mint a token that could take over the
            // live call; the real call is untouched.
            app.metrics.error("webhook_replay");
            tracing::warn!("refused: a webhook for this CallSid was already answered (replay?)");
            return (StatusCode::CONFLICT, "this call was already answered").into_response();
        }
        Err(why) => {
            let outcome = if why == Refusal::Full { "busy" } else { "draining" };
            app.metrics.calls.with_label_values(&[outcome]).inc();
            tracing::info!(outcome, from = %Masked(&info.from), "call refused");
            return xml(twiml::busy(&app.cfg.busy_message));
        }
    }
    drop(_g);
    // Another replica may have answered this webhook already.
    match app.shared.first_webhook(&app.livekit, &info.call_sid).await {
        Ok(true) => {}
        Ok(false) => {
            app.registry.release(&info.call_sid);
            app.metrics.error("webhook_replay");
            tracing::warn!(call_sid = %info.call_sid, "refused: another replica already answered this CallSid (replay?)");
            return (StatusCode::CONFLICT, "this call was already answered").into_response();
        }
        Err(e) => {
            app.registry.release(&info.call_sid);
            app.metrics.error("shared_state");
            app.metrics.calls.with_label_values(&["room_failed"]).inc();
            tracing::error!(call_sid = %info.call_sid, error = %e, "shared state unavailable: caller gets the fallback");
            return xml(app.fallback_twiml());
        }
    }
    if let Err(e) = app.livekit.create_call_room(&info).await {
        app.registry.release(&info.call_sid);
        app.metrics.error("room_create_failed");
        app.metrics.calls.with_label_values(&["room_failed"]).inc();
        tracing::error!(call_sid = %info.call_sid, error = %e, "could not create the call's room: caller gets the fallback");
        return xml(app.fallback_twiml());
    }
    let token = proto::stream_token::mint(&app.stream_secret, &info.description(), unix_now() + STREAM_TOKEN_TTL_SECS, &nonce);
    let answer = ConnectStream {
        url: app.cfg.stream_url(),
        name: Some(room_name(&info.call_sid)),
        status_callback: None,
        parameters: vec![
            ("callSid".into(), info.call_sid.clone()),
            ("accountSid".into(), info.account_sid.clone()),
            ("from".into(), info.from.clone()),
            ("to".into(), info.to.clone()),
            ("token".into(), token),
        ],
    };
    match answer.to_twiml() {
        Ok(x) => {
            tracing::info!(call_sid = %info.call_sid, from = %Masked(&info.from), to = %Masked(&info.to), "call admitted");
            xml(x)
        }
        Err(e) => {
            app.registry.release(&info.call_sid);
            app.metrics.error("config");
            tracing::error!(error = %e, "PUBLIC_URL gives an unusable stream URL");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// SIP mode: send the call to LiveKit SIP; LiveKit's dispatch rule puts it in `call-…`.
fn sip_answer(cfg: &Config, info: &CallInfo) -> Response {
    let dial = DialSip {
        uri: format!("sip:{}@{};transport={}", info.to, cfg.sip_host, cfg.sip_transport),
        username: (!cfg.sip_username.is_empty()).then(|| cfg.sip_username.clone()),
        password: cfg.sip_password.as_ref().map(|p| p.expose_secret().to_owned()).filter(|p| !p.is_empty()),
        headers: vec![("X-CallSid".into(), info.call_sid.clone()), ("X-From".into(), info.from.clone())],
        action: None,
    };
    match dial.to_twiml() {
        Ok(x) => xml(x),
        Err(e) => {
            tracing::error!(error = %e, "SIP mode misconfigured");
            xml(twiml::busy("We cannot take your call right now. Please try again later."))
        }
    }
}

async fn call_status(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        app.metrics.error("bad_request");
        return (StatusCode::BAD_REQUEST, "body is not form-encoded").into_response();
    };
    if !app.form_signed(&uri, &headers, &params) {
        app.metrics.error("signature_invalid");
        return (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature").into_response();
    }
    let status = param(&params, "CallStatus");
    let known = ["completed", "busy", "failed", "no-answer", "canceled", "in-progress", "ringing", "queued"];
    let label = if known.contains(&status) { status } else { "other" };
    app.metrics.calls.with_label_values(&[&format!("status_{label}")]).inc();
    let sid = param(&params, "CallSid");
    let sid = if is_sid(sid, "CA") { sid } else { "invalid" };
    tracing::info!(call_sid = %sid, status = label, duration = %param(&params, "CallDuration").parse::<u64>().unwrap_or(0), "call status");
    StatusCode::NO_CONTENT.into_response()
}

async fn create_sip_participant(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    crate::outbound::create_sip_participant(app, headers, body).await
}

/// Why a request is turned away, as its answer.
type Refused = (StatusCode, &'static str);

/// A signed Twilio form POST to one of the outbound URLs, checked: (params, the call).
fn outbound_request(
    app: &App,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Result<(Vec<(String, String)>, crate::outbound::Callback), Refused> {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        app.metrics.error("bad_request");
        return Err((StatusCode::BAD_REQUEST, "body is not form-encoded"));
    };
    if !app.form_signed(uri, headers, &params) {
        app.metrics.error("signature_invalid");
        tracing::warn!(path, "refused: bad X-Twilio-Signature");
        return Err((StatusCode::FORBIDDEN, "invalid X-Twilio-Signature"));
    }
    let sid = param(&params, "CallSid");
    if !is_sid(sid, "CA") {
        app.metrics.error("bad_request");
        return Err((StatusCode::BAD_REQUEST, "CallSid missing or malformed"));
    }
    // Only calls this bridge placed: the URL carries its token over the call's description.
    match crate::outbound::callback_from(app, uri, sid) {
        Ok(cb) => Ok((params, cb)),
        Err(why) => {
            app.metrics.error("outbound_ref_invalid");
            tracing::warn!(path, reason = why, "refused: not a call this bridge placed");
            Err((StatusCode::FORBIDDEN, "not a call this bridge placed"))
        }
    }
}

/// Twilio fetches the TwiML of an outbound call when the callee answers: the Media Stream,
/// whose token covers the room and identity the call was placed for.
async fn outbound_call(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let (params, cb) = match outbound_request(&app, &uri, &headers, &body, "/outbound-call") {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    // Twilio answered: as good as the in-progress callback, which may come later.
    let amd = proto::outbound::AnsweredBy::parse(param(&params, "AnsweredBy"));
    crate::outbound::deliver(&app, &cb, Some(proto::outbound::TwilioCallStatus::InProgress), amd).await;
    let mut nonce_bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce_bytes);
    let nonce: String = nonce_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token = proto::stream_token::mint(&app.stream_secret, &cb.info.description(), unix_now() + STREAM_TOKEN_TTL_SECS, &nonce);
    let info = &cb.info;
    let mut parameters = vec![
        ("callSid".into(), info.call_sid.clone()),
        ("accountSid".into(), info.account_sid.clone()),
        ("from".into(), info.from.clone()),
        ("to".into(), info.to.clone()),
    ];
    parameters.extend(crate::outbound::stream_parameters(&cb));
    parameters.push(("token".into(), token));
    let answer = ConnectStream { url: app.cfg.stream_url(), name: Some(info.room.clone()), status_callback: None, parameters };
    match answer.to_twiml() {
        Ok(x) => xml(x),
        Err(e) => {
            app.metrics.error("config");
            tracing::error!(error = %e, "PUBLIC_URL gives an unusable stream URL");
            xml(twiml::busy(&app.cfg.fallback_message))
        }
    }
}

/// Status callbacks of an outbound call (initiated, ringing, answered, completed, or why not).
async fn outbound_status(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let (params, cb) = match outbound_request(&app, &uri, &headers, &body, "/outbound-status") {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let status = proto::outbound::TwilioCallStatus::parse(param(&params, "CallStatus"));
    let amd = proto::outbound::AnsweredBy::parse(param(&params, "AnsweredBy"));
    tracing::info!(call_sid = %cb.info.call_sid, status = status.map_or("other", |s| s.as_str()), "outbound call status");
    crate::outbound::deliver(&app, &cb, status, amd).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Twilio's asynchronous answering-machine result.
async fn outbound_amd(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let (params, cb) = match outbound_request(&app, &uri, &headers, &body, "/outbound-amd") {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Some(amd) = proto::outbound::AnsweredBy::parse(param(&params, "AnsweredBy")) else {
        app.metrics.error("bad_request");
        return (StatusCode::BAD_REQUEST, "AnsweredBy missing or unknown").into_response();
    };
    tracing::info!(call_sid = %cb.info.call_sid, answered_by = amd.as_str(), "answering machine detection");
    crate::outbound::deliver(&app, &cb, None, Some(amd)).await;
    StatusCode::NO_CONTENT.into_response()
}

const WS_READ_BUFFER: usize = 4 * 1024;

async fn media_stream(State(app): State<Arc<App>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if !app.ws_signed(&headers) {
        app.metrics.error("signature_invalid");
        tracing::warn!(path = "/media-stream", "refused: bad X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid X-Twilio-Signature").into_response();
    }
    // The signature on the upgrade covers only the URL, so one captured upgrade could open any
    // number of sockets: each holds a place until its `start`, bounded like calls.
    let Some(slot) = app.registry.open_stream() else {
        app.metrics.error("stream_refused_full");
        return (StatusCode::SERVICE_UNAVAILABLE, "not accepting calls").into_response();
    };
    // Twilio's messages are ~400 bytes; tungstenite's default 128 KiB read buffer is zero-filled
    // on first read, which made it the largest resident cost of a call. Bigger frames still fit
    // (the buffer grows to the frame's length).
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| crate::call_task::run(app, socket, slot))
}

/// Liveness: the process serves HTTP.
async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(serde_json::json!({"status": "ok", "active_calls": app.registry.active_count()})).into_response()
}

/// Readiness: 200 while new calls are admitted, 503 when draining or full (the load balancer
/// sends the next call elsewhere).
async fn ready(State(app): State<Arc<App>>) -> Response {
    let draining = app.registry.is_draining();
    let ok = app.registry.accepts_calls(Instant::now());
    let status = if ok { "ready" } else if draining { "draining" } else { "full" };
    let body = axum::Json(serde_json::json!({
        "status": status,
        "active_calls": app.registry.active_count(),
        "max_calls": app.cfg.max_calls,
    }));
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.observe_runtime(&app.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}
