#!/usr/bin/env python3
"""The Twilio <-> LiveKit bridge as it is usually written in Python: FastAPI + uvicorn for the
webhook and the Media Streams WebSocket, LiveKit's official Python SDK (PyPI `livekit`,
`livekit-api`) for the room. The alternative a user would pick, for side-by-side runs with our
bridge (scripts/compare_python_bridge.sh). It does the same work per call:

- POST /incoming-call: checks X-Twilio-Signature, creates room call-<CallSid> (RoomService),
  answers <Connect><Stream> with the CallSid as a parameter;
- /media-stream: on `start` joins the room as phone-<CallSid> (kind sip), publishes the caller's
  audio (mu-law 8 kHz decoded, fed to an AudioSource; the SDK resamples and Opus-encodes), and
  subscribes to the room's audio (AudioStream at 8 kHz, 20 ms frames mu-law encoded and sent to
  Twilio at the pace they come, each followed by a mark);
- on `stop` or close: leaves and deletes the room.

Only PyPI `livekit`, `livekit-api`, `fastapi`, `uvicorn`, `python-multipart` (and numpy) are used.

    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
    TWILIO_AUTH_TOKEN=... PUBLIC_URL=http://127.0.0.1:8081 python3 bench/python_bridge/bridge.py --port 8081
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
from urllib.parse import urlparse

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from livekit import api, rtc

LIVEKIT_URL = os.environ.get("LIVEKIT_URL", "ws://127.0.0.1:7880")
API_KEY = os.environ.get("LIVEKIT_API_KEY", "devkey")
API_SECRET = os.environ.get("LIVEKIT_API_SECRET", "secret")
AUTH_TOKEN = os.environ.get("TWILIO_AUTH_TOKEN", "")
PUBLIC_URL = os.environ.get("PUBLIC_URL", "http://127.0.0.1:8081").rstrip("/")

app = FastAPI()
lkapi = None


# --- G.711 mu-law, vectorised (the audioop module is gone from Python 3.13) ---------------------
def _ulaw_decode_table():
    out = np.zeros(256, dtype=np.int16)
    for i in range(256):
        u = ~i & 0xFF
        t = ((u & 0x0F) << 3) + 0x84
        t <<= (u & 0x70) >> 4
        out[i] = (0x84 - t) if (u & 0x80) else (t - 0x84)
    return out


ULAW_DECODE = _ulaw_decode_table()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    x = np.minimum(np.abs(x), 32635) + 0x84
    exp = np.floor(np.log2(x)).astype(np.int32) - 7
    exp = np.clip(exp, 0, 7)
    mant = (x >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def signature_ok(url: str, params: dict, header: str) -> bool:
    if not AUTH_TOKEN:
        return True
    data = url + "".join(k + v for k, v in sorted(params.items()))
    mac = base64.b64encode(hmac.new(AUTH_TOKEN.encode(), data.encode(), hashlib.sha1).digest()).decode()
    return hmac.compare_digest(mac, header or "")


@app.post("/incoming-call")
async def incoming_call(request: Request):
    form = dict((await request.form()).items())
    if not signature_ok(PUBLIC_URL + "/incoming-call", form, request.headers.get("x-twilio-signature", "")):
        return Response("invalid signature", status_code=403)
    call_sid = form.get("CallSid", "")
    await lkapi.room.create_room(api.CreateRoomRequest(name=f"call-{call_sid}", empty_timeout=60))
    host = urlparse(PUBLIC_URL).netloc
    twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://{host}/media-stream">'
             f'<Parameter name="callSid" value="{call_sid}"/></Stream></Connect></Response>')
    return Response(twiml, media_type="text/xml")


@app.post("/call-status")
async def call_status():
    return Response(status_code=204)


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.websocket("/media-stream")
async def media_stream(ws: WebSocket):
    await ws.accept()
    room = None
    source = None
    stream_sid = None
    call_sid = None
    tasks = []
    marks = 0

    async def play(track):
        nonlocal marks
        stream = rtc.AudioStream(track, sample_rate=8000, num_channels=1, frame_size_ms=20)
        async for ev in stream:
            pcm = np.frombuffer(ev.frame.data, dtype=np.int16)
            payload = base64.b64encode(ulaw_encode(pcm)).decode()
            marks += 1
            await ws.send_text(json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}))
            await ws.send_text(json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": f"m{marks}"}}))

    try:
        while True:
            msg = json.loads(await ws.receive_text())
            event = msg.get("event")
            if event == "start":
                stream_sid = msg["start"]["streamSid"]
                call_sid = msg["start"]["customParameters"].get("callSid") or msg["start"]["callSid"]
                token = (api.AccessToken(API_KEY, API_SECRET).with_identity(f"phone-{call_sid}").with_kind("sip")
                         .with_grants(api.VideoGrants(room_join=True, room=f"call-{call_sid}")).to_jwt())
                room = rtc.Room()

                @room.on("track_subscribed")
                def _on_track(track, pub, participant):
                    if track.kind == rtc.TrackKind.KIND_AUDIO:
                        tasks.append(asyncio.create_task(play(track)))

                await room.connect(LIVEKIT_URL, token)
                source = rtc.AudioSource(8000, 1)
                track = rtc.LocalAudioTrack.create_audio_track("phone", source)
                await room.local_participant.publish_track(
                    track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            elif event == "media" and source is not None:
                pcm = ULAW_DECODE[np.frombuffer(base64.b64decode(msg["media"]["payload"]), dtype=np.uint8)]
                frame = rtc.AudioFrame(pcm.tobytes(), 8000, 1, len(pcm))
                await source.capture_frame(frame)
            elif event == "stop":
                break
    except WebSocketDisconnect:
        pass
    finally:
        for t in tasks:
            t.cancel()
        if room is not None:
            await room.disconnect()
        if call_sid:
            try:
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=f"call-{call_sid}"))
            except Exception:
                pass
        try:
            await ws.close()
        except Exception:
            pass


@app.on_event("startup")
async def startup():
    global lkapi
    lkapi = api.LiveKitAPI(LIVEKIT_URL.replace("ws://", "http://").replace("wss://", "https://"), API_KEY, API_SECRET)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8081)
    a = p.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", ws_max_size=65536)


if __name__ == "__main__":
    main()
