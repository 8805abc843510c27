#!/usr/bin/env python3
"""The official LiveKit Python SDK across a server restart: joins, publishes a sine tone for
`--seconds`, and reports the reconnect events it saw (the SDK must rejoin when the restarted
server answers its resume with leave{STATE_MISMATCH, RECONNECT}).

Prints one JSON line; exit 0 when it was still connected at the end, 77 without livekit/numpy.
"""

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
try:
    from livekit import rtc
    from sdk_peer import RATE, play_tone, token
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)


async def run(a):
    room = rtc.Room()
    events = []
    for name in ("reconnecting", "reconnected", "disconnected"):
        room.on(name, lambda *args, name=name: events.append(name))
    await room.connect(a.url, token(a.api_key, a.api_secret, a.identity, a.room), rtc.RoomOptions(auto_subscribe=True))
    first_sid = room.local_participant.sid
    print(json.dumps({"joined": first_sid}), flush=True)
    source = rtc.AudioSource(RATE, 1)
    local = rtc.LocalAudioTrack.create_audio_track("py-tone", source)
    await room.local_participant.publish_track(local, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await play_tone(source, a.freq, a.seconds)
    result = {"ok": room.isconnected(), "events": events, "first_sid": first_sid,
              "sid": room.local_participant.sid}
    await room.disconnect()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", required=True)
    ap.add_argument("--identity", default="py")
    ap.add_argument("--freq", type=float, default=440.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(a), timeout=a.seconds + 40))
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
