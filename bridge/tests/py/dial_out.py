"""Dials out through the bridge with the official LiveKit server SDK (PyPI livekit-api), exactly
as against LiveKit: create_sip_participant waits for the answer; a busy number raises
SipCallError with LiveKit SIP's status. Prints one JSON line."""

import argparse
import asyncio
import json

from livekit import api


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="the bridge's URL, where LiveKit's would go")
    p.add_argument("--room", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--busy", required=True, help="a number that is busy")
    a = p.parse_args()
    lkapi = api.LiveKitAPI(url=a.url, api_key="devkey", api_secret="secret")
    out = {"ok": False}
    try:
        info = await lkapi.sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id="",
                sip_call_to=a.to,
                room_name=a.room,
                participant_identity="py-callee",
                participant_name="Callee",
                participant_attributes={"campaign": "spring"},
                wait_until_answered=True,
                headers={"X-Twilio-MachineDetection": "Enable"},
            )
        )
        out.update(identity=info.participant_identity, room=info.room_name, call_id=info.sip_call_id,
                   participant_id=info.participant_id)
        try:
            await lkapi.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(sip_call_to=a.busy, room_name=a.room, wait_until_answered=True)
            )
            out["busy"] = "answered?"
        except api.SipCallError as e:
            out["busy"] = {"code": e.code, "status": e.status, "sip_status_code": e.sip_status_code,
                           "sip_status": e.sip_status}
        out["ok"] = True
    finally:
        await lkapi.aclose()
    print(json.dumps(out))


asyncio.run(main())
