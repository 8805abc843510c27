//! `X-Twilio-Signature`: HMAC-SHA1 over the URL Twilio requested (plus sorted form params),
//! keyed by the account's auth token, base64. See protocols.md §2.
//!
//! Twilio's own libraries accept the URL both with and without the scheme's default port, so a
//! proxy that adds or strips `:443` does not break validation; we do the same.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// The signature Twilio would send for this URL and form params.
pub fn compute<K: AsRef<str>, V: AsRef<str>>(auth_token: &str, url: &str, params: &[(K, V)]) -> String {
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    // Names sorted by bytes; each name's distinct values sorted; `name + value` with no separators.
    let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    for (k, v) in pairs {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    B64.encode(mac.finalize().into_bytes())
}

/// Validates a form-encoded POST (e.g. `/incoming-call`, `/call-status`).
pub fn validate_form<K: AsRef<str>, V: AsRef<str>>(auth_token: &str, url: &str, params: &[(K, V)], header: &str) -> bool {
    url_variants(url).iter().any(|u| ct_eq(&compute(auth_token, u, params), header))
}

/// Validates a request whose body is not form-encoded (JSON): the signature covers the URL, whose
/// query carries `bodySHA256`, the lowercase hex SHA-256 of the raw body.
pub fn validate_body(auth_token: &str, url: &str, body: &[u8], header: &str) -> bool {
    let Some(claimed) = query_value(url, "bodySHA256") else { return false };
    let actual = hex(&Sha256::digest(body));
    let no_params: [(&str, &str); 0] = [];
    ct_eq(&actual, &claimed) && validate_form(auth_token, url, &no_params, header)
}

/// Validates the Media Streams WebSocket upgrade: the `wss://…` URL alone, no params.
pub fn validate_websocket(auth_token: &str, url: &str, header: &str) -> bool {
    let no_params: [(&str, &str); 0] = [];
    validate_form(auth_token, url, &no_params, header)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn query_value(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// The URL as given, plus the same URL with the default port added (if it had none) or with its
/// port removed (if it had one).
pub fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else { return out };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return out,
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    // Userinfo and IPv6 brackets: the port is after the last ':' that follows any ']'.
    let host_start = authority.rfind('@').map(|i| i + 1).unwrap_or(0);
    let hostport = &authority[host_start..];
    let bracket = hostport.rfind(']').map(|i| i + 1).unwrap_or(0);
    let other = match hostport[bracket..].rfind(':') {
        Some(i) => {
            let host = &hostport[..bracket + i];
            format!("{scheme}://{}{host}{tail}", &authority[..host_start])
        }
        None => format!("{scheme}://{authority}:{default_port}{tail}"),
    };
    out.push(other);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
    }

    #[test]
    fn published_form_vector() {
        assert_eq!(compute(TOKEN, URL, &params()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(validate_form(TOKEN, URL, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!validate_form(TOKEN, URL, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8"));
        assert!(!validate_form("54321", URL, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        let mut tampered = params();
        tampered[1].1 = "1235";
        assert!(!validate_form(TOKEN, URL, &tampered, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn published_port_vectors() {
        let with_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(compute(TOKEN, with_443, &params()), "kvajT1Ptam85bY51eRf/AJRuM3w=");
        // Either form of the URL validates either signature.
        assert!(validate_form(TOKEN, URL, &params(), "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(validate_form(TOKEN, with_443, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));

        let http_80 = "http://mycompany.com:80/myapp.php?foo=1&bar=2";
        assert_eq!(compute(TOKEN, http_80, &params()), "0ZXoZLH/DfblKGATFgpif+LLRf4=");
        assert!(validate_form(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", &params(), "0ZXoZLH/DfblKGATFgpif+LLRf4="));

        let odd = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(compute(TOKEN, odd, &params()), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=");
        assert!(validate_form(TOKEN, odd, &params(), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="));
    }

    #[test]
    fn published_multi_value_vector() {
        let p = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")];
        assert_eq!(compute(TOKEN, URL, &p), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    }

    #[test]
    fn published_json_body_vector() {
        let body = br#"{"property": "value", "boolean": true}"#;
        assert_eq!(hex(&Sha256::digest(body)), "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620");
        let url = format!("{URL}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620");
        assert!(validate_body(TOKEN, &url, body, "a9nBmqA0ju/hNViExpshrM61xv4="));
        // A changed body no longer matches its hash, even with the right signature.
        assert!(!validate_body(TOKEN, &url, br#"{"property": "value", "boolean": false}"#, "a9nBmqA0ju/hNViExpshrM61xv4="));
        assert!(!validate_body(TOKEN, URL, body, "a9nBmqA0ju/hNViExpshrM61xv4="));
    }

    #[test]
    fn websocket_vector() {
        assert_eq!(compute::<&str, &str>(TOKEN, "wss://example.com/media", &[]), "7PR3qMkpDyEJtMrVOY/LDyNq8J8=");
        assert!(validate_websocket(TOKEN, "wss://example.com/media", "7PR3qMkpDyEJtMrVOY/LDyNq8J8="));
        assert!(validate_websocket(TOKEN, "wss://example.com:443/media", "7PR3qMkpDyEJtMrVOY/LDyNq8J8="));
        assert!(!validate_websocket(TOKEN, "wss://example.com/other", "7PR3qMkpDyEJtMrVOY/LDyNq8J8="));
        assert!(!validate_websocket(TOKEN, "wss://example.com/media", ""));
    }

    #[test]
    fn url_variants_add_or_strip_port() {
        assert_eq!(url_variants("https://a.com/x?y=1")[1], "https://a.com:443/x?y=1");
        assert_eq!(url_variants("wss://a.com")[1], "wss://a.com:443");
        assert_eq!(url_variants("http://a.com:8080/x")[1], "http://a.com/x");
        assert_eq!(url_variants("http://u:p@[::1]:80/x")[1], "http://u:p@[::1]/x");
        assert_eq!(url_variants("http://[::1]/x")[1], "http://[::1]:80/x");
        assert_eq!(url_variants("not a url"), vec!["not a url".to_string()]);
    }
}
