#!/usr/bin/env python3
"""Join with the official Python SDK and record what the server does to us until we are
disconnected (or --timeout): data packets, attribute/metadata/name changes, the disconnect reason.

Used by devroom's RoomService tests (SendData, UpdateParticipant, RemoveParticipant).
Prints "joined <sid>" as soon as connected, then one JSON line at the end; exit 77 if
`livekit` is missing.
"""

import argparse
import asyncio
import json
import sys

try:
    from livekit import rtc
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from audio_data import make_token  # noqa: E402


async def run(args):
    room = rtc.Room()
    res = {"ok": True, "data": [], "attributes": [], "metadata": [], "names": [], "disconnected": None}
    done = asyncio.Event()

    @room.on("data_received")
    def _data(pkt):
        res["data"].append({"data": pkt.data.decode(errors="replace"), "topic": pkt.topic,
                            "from": pkt.participant.identity if pkt.participant else None,
                            "kind": int(pkt.kind)})

    @room.on("participant_attributes_changed")
    def _attrs(changed, participant):
        res["attributes"].append({"who": participant.identity, "changed": dict(changed),
                                  "now": dict(participant.attributes)})

    @room.on("participant_metadata_changed")
    def _meta(participant, old, new):
        res["metadata"].append({"who": participant.identity, "old": old, "new": new})

    @room.on("participant_name_changed")
    def _name(participant, old, new):
        res["names"].append({"who": participant.identity, "old": old, "new": new})

    @room.on("disconnected")
    def _gone(reason):
        res["disconnected"] = int(reason)
        done.set()

    await room.connect(args.url, make_token(args.api_key, args.api_secret, args.identity, args.room,
                                            attributes={"initial": "yes"}))
    print(f"joined {room.local_participant.sid}", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
    except asyncio.TimeoutError:
        res["timeout"] = True
        await room.disconnect()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", default="observe")
    ap.add_argument("--identity", default="observer")
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    try:
        result = asyncio.run(run(args))
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
