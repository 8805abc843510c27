//! `bridge sip-setup`: provisions LiveKit SIP for `BRIDGE_MODE=sip` — an inbound trunk that
//! accepts Twilio's `<Dial><Sip>` with our username/password, and an individual dispatch rule
//! that puts each caller in a new `call-…` room. Idempotent: both are found by name first.

use livekit_api::services::sip::{
    CreateSIPDispatchRuleOptions, CreateSIPInboundTrunkOptions, ListSIPDispatchRuleFilter, ListSIPInboundTrunkFilter,
    SIPClient,
};
use livekit_protocol as lk;
use serde::Serialize;

use crate::config::Config;

pub const TRUNK_NAME: &str = "callbridge-twilio";
pub const RULE_NAME: &str = "callbridge-calls";

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SipSetupReport {
    pub trunk_id: String,
    pub trunk_created: bool,
    pub dispatch_rule_id: String,
    pub dispatch_rule_created: bool,
}

pub async fn run(cfg: &Config) -> anyhow::Result<SipSetupReport> {
    // Without credentials the trunk would take calls from anyone who finds the SIP port.
    let password_set = cfg.sip_password.as_ref().is_some_and(|p| !secrecy::ExposeSecret::expose_secret(p).is_empty());
    anyhow::ensure!(
        !cfg.sip_username.is_empty() && password_set,
        "LIVEKIT_SIP_USERNAME and LIVEKIT_SIP_PASSWORD must be set: an inbound trunk without them accepts anyone's calls"
    );
    let sip = SIPClient::with_api_key(&cfg.livekit_http(), cfg.livekit_key(), cfg.livekit_secret());
    // Twilio copies these INVITE headers; LiveKit maps them to the participant's attributes.
    let headers_to_attributes = [
        ("X-CallSid".to_owned(), "sip.twilio.callSid".to_owned()),
        ("X-From".to_owned(), "sip.phoneNumber".to_owned()),
    ]
    .into();

    let trunks = sip.list_sip_inbound_trunk(ListSIPInboundTrunkFilter::All).await?;
    let (trunk_id, trunk_created) = match trunks.iter().find(|t| t.name == TRUNK_NAME) {
        Some(t) => (t.sip_trunk_id.clone(), false),
        None => {
            let t = sip
                .create_sip_inbound_trunk(
                    TRUNK_NAME.to_owned(),
                    vec![],
                    CreateSIPInboundTrunkOptions {
                        auth_username: (!cfg.sip_username.is_empty()).then(|| cfg.sip_username.clone()),
                        auth_password: cfg.sip_password.as_ref().map(|p| secrecy::ExposeSecret::expose_secret(p).to_owned()).filter(|p| !p.is_empty()),
                        headers_to_attributes: Some(headers_to_attributes),
                        ..Default::default()
                    },
                )
                .await?;
            (t.sip_trunk_id, true)
        }
    };

    let rules = sip.list_sip_dispatch_rule(ListSIPDispatchRuleFilter::All).await?;
    let (dispatch_rule_id, dispatch_rule_created) = match rules.iter().find(|r| r.name == RULE_NAME) {
        Some(r) => (r.sip_dispatch_rule_id.clone(), false),
        None => {
            let room_config = (!cfg.agent_name.is_empty()).then(|| lk::RoomConfiguration {
                agents: vec![lk::RoomAgentDispatch { agent_name: cfg.agent_name.clone(), ..Default::default() }],
                ..Default::default()
            });
            let r = sip
                .create_sip_dispatch_rule(
                    lk::sip_dispatch_rule::Rule::DispatchRuleIndividual(lk::SipDispatchRuleIndividual {
                        room_prefix: "call-".into(),
                        ..Default::default()
                    }),
                    CreateSIPDispatchRuleOptions {
                        name: RULE_NAME.into(),
                        trunk_ids: vec![trunk_id.clone()],
                        room_config,
                        ..Default::default()
                    },
                )
                .await?;
            (r.sip_dispatch_rule_id, true)
        }
    };
    Ok(SipSetupReport { trunk_id, trunk_created, dispatch_rule_id, dispatch_rule_created })
}
