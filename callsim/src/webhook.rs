//! Twilio's HTTP requests to the bridge: form POSTs signed with `X-Twilio-Signature`.

use std::time::Duration;

/// Largest response body read (TwiML is small); the rest is ignored.
pub const MAX_BODY: usize = 1 << 20;

/// An HTTP client for the webhooks (cheap to clone; share one across calls).
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent("TwilioProxy/1.1")
        .build()
}

/// The form body exactly as sent (application/x-www-form-urlencoded).
pub fn form_body(params: &[(&str, String)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// POSTs `params` to `url`, signed over that exact URL. Returns the status and (at most
/// [`MAX_BODY`] bytes of) the body.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    auth_token: &str,
    params: &[(&str, String)],
) -> Result<(u16, String), String> {
    let signature = proto::signature::compute(auth_token, url, params);
    let mut resp = client
        .post(url)
        .header("X-Twilio-Signature", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "*/*")
        .body(form_body(params))
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("POST {url}: reading body: {e}"))? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_body_encodes_like_a_browser() {
        let body = form_body(&[("From", "+1 555".into()), ("To", "a&b=c".into())]);
        assert_eq!(body, "From=%2B1+555&To=a%26b%3Dc");
    }
}
