//! Twilio REST: update a live call (hang up, or redirect to new TwiML for a transfer).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Twilio REST request failed: {0}")]
    Http(String),
    #[error("Twilio REST answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("invalid call sid {0:?}")]
    BadSid(String),
}

#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    base: String,
    account_sid: String,
    auth_token: String,
}

impl TwilioRest {
    pub fn new(base: &str, account_sid: &str, auth_token: &str) -> TwilioRest {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        TwilioRest {
            http,
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
        }
    }

    /// `Status=completed`: hang up an in-progress call.
    pub async fn hangup(&self, call_sid: &str) -> Result<(), RestError> {
        self.update(call_sid, &[("Status", "completed")]).await
    }

    /// Replace the call's TwiML (e.g. `<Dial>` for a transfer).
    pub async fn redirect(&self, call_sid: &str, twiml: &str) -> Result<(), RestError> {
        self.update(call_sid, &[("Twiml", twiml)]).await
    }

    async fn update(&self, call_sid: &str, form: &[(&str, &str)]) -> Result<(), RestError> {
        // The sid goes into the URL path: accept only what Twilio issues.
        if !(call_sid.len() == 34 && call_sid.starts_with("CA") && call_sid[2..].bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(RestError::BadSid(call_sid.to_owned()));
        }
        let url = format!("{}/2010-04-01/Accounts/{}/Calls/{}.json", self.base, self.account_sid, call_sid);
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header("Accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| RestError::Http(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(RestError::Status { status: status.as_u16(), body: body.chars().take(300).collect() })
    }
}
