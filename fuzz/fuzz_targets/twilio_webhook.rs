//! The webhook path of bridge/src/http.rs: the input is `path?query \n X-Twilio-Signature \n
//! form body`. The body is decoded with serde_urlencoded and checked with
//! `validate_form` against PUBLIC_URL + path, the signature also against the Media Streams URL
//! (`validate_websocket`) and as a JSON-body signature; a `token` parameter goes through
//! `stream_token::verify` as the `start` message's does. A request Twilio signed correctly
//! must always pass.

#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::signature::{compute, url_variants, validate_body, validate_form, validate_websocket};
use proto::stream_token::{self, CallDescription};

const AUTH_TOKEN: &str = "12345";
const PUBLIC_URL: &str = "https://bridge.example.com";
const SECRET: &[u8] = b"stream-secret";

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(path), Some(sig), body) = (parts.next(), parts.next(), parts.next().unwrap_or_default()) else { return };
    let Ok(path) = std::str::from_utf8(path) else { return };
    // http's HeaderValue::to_str: visible ASCII or nothing.
    let sig = std::str::from_utf8(sig).ok().filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b))).unwrap_or("");
    let url = format!("{PUBLIC_URL}{path}");
    let _ = validate_websocket(AUTH_TOKEN, &format!("wss://bridge.example.com{path}"), sig);
    let _ = validate_body(AUTH_TOKEN, &url, body, sig);
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else { return };
    let _ = validate_form(AUTH_TOKEN, &url, &params, sig);
    for signed_url in url_variants(&url) {
        let good = compute(AUTH_TOKEN, &signed_url, &params);
        assert!(validate_form(AUTH_TOKEN, &url, &params, &good), "a correct signature was refused");
    }
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("");
    let call = CallDescription {
        call_sid: param("CallSid"),
        account_sid: param("AccountSid"),
        from: param("From"),
        to: param("To"),
        room: param("room"),
        identity: param("identity"),
        outbound: !param("outbound").is_empty(),
    };
    if let Some((_, token)) = params.iter().find(|(k, _)| k == "token") {
        let _ = stream_token::verify(SECRET, token, &call, 1_700_000_000);
    }
    let nonce: String = call.call_sid.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
    if !nonce.is_empty() {
        let t = stream_token::mint(SECRET, &call, 1_700_000_060, &nonce);
        assert!(stream_token::verify(SECRET, &t, &call, 1_700_000_000).is_ok(), "a minted token was refused");
    }
});
