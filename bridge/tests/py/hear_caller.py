#!/usr/bin/env python3
"""The official LiveKit Python SDK joins a call's room as a supervisor and must hear the caller.

Subscribes to the phone participant's track (identity phone-<CallSid>, kind SIP), collects
`--seconds` of audio and checks the dominant frequency and level; reports the track's codec
(as the server published it and as the SDK's WebRTC stack decoded it) and the tone's SNR: the
median over 20 ms windows of a least-squares sinusoid fit, which follows a slowly modulated
level. Also checks the phone participant's SIP attributes. Prints one JSON line; exit 0 on success, 1 on failure, 77 when
the `livekit` module is missing (the Rust test decides whether that is a skip).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time

try:
    import numpy as np
    from livekit import rtc
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(key, secret, identity, room):
    now = int(time.time())
    claims = {"iss": key, "sub": identity, "nbf": now - 5, "exp": now + 600,
              "video": {"roomJoin": True, "room": room, "canSubscribe": True, "canPublish": False}}
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def tone_snr_median(x, rate, freq):
    """Median over 20 ms windows of (fitted sinusoid energy / residual energy), in dB."""
    win = rate // 50
    t = np.arange(win) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones(win)], axis=1)
    out = []
    for k in range(len(x) // win):
        w = x[k * win:(k + 1) * win]
        coef, *_ = np.linalg.lstsq(basis, w, rcond=None)
        fit = basis @ coef
        noise = ((w - fit) ** 2).sum()
        out.append(10 * np.log10(max((fit ** 2).sum(), 1e-9) / max(noise, 1e-9)))
    return float(np.median(out)) if out else float("-inf")


async def main(a) -> int:
    room = rtc.Room()
    got_track = asyncio.Future()
    phone_info = {}

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if participant.identity.startswith("phone-") and not got_track.done():
            phone_info["kind"] = int(participant.kind)
            phone_info["attributes"] = dict(participant.attributes)
            phone_info["mime_type"] = publication.mime_type
            got_track.set_result(track)

    await room.connect(a.url, make_token("devkey", "secret", "supervisor-py", a.room),
                       rtc.RoomOptions(auto_subscribe=True))
    track = await asyncio.wait_for(got_track, timeout=20)
    rate = a.rate
    stream = rtc.AudioStream(track, sample_rate=rate, num_channels=1)
    samples = []
    need = int(rate * a.seconds)
    async def collect():
        async for ev in stream:
            samples.append(np.frombuffer(bytes(ev.frame.data), dtype=np.int16).copy())
            if sum(len(s) for s in samples) >= need:
                break
    await asyncio.wait_for(collect(), timeout=a.seconds + 20)
    decoded = []
    try:
        for st in await track.get_stats():
            if st.WhichOneof("stats") == "codec":
                decoded.append(st.codec.codec.mime_type)
    except Exception as e:  # stats are a report, not the test
        decoded.append(f"stats failed: {e}")
    await room.disconnect()

    x = np.concatenate(samples).astype(np.float64)
    # Judge the loudest second (the caller may start a little after we subscribe).
    tenth = rate // 10
    frames = x[: len(x) // tenth * tenth].reshape(-1, tenth)
    energy = (frames ** 2).mean(axis=1)
    best = max(range(len(frames) - 9), key=lambda i: energy[i:i + 10].sum()) if len(frames) > 10 else 0
    seg = frames[best:best + 10].reshape(-1)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    freq = float(np.argmax(spec) * rate / len(seg))
    rms = float(np.sqrt((seg ** 2).mean()))
    snr = tone_snr_median(seg, rate, a.freq)
    attrs = phone_info.get("attributes", {})
    ok = abs(freq - a.freq) < 15 and rms > 500 and attrs.get("sip.twilio.callSid") == a.call_sid \
        and "sip.phoneNumber" in attrs and "sip.trunkPhoneNumber" in attrs
    print(json.dumps({"ok": ok, "freq": freq, "rms": rms, "snr_db": snr, "mime_type": phone_info.get("mime_type"),
                      "decoded_codecs": decoded, "kind": phone_info.get("kind"), "attributes": attrs}))
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--call-sid", required=True)
    p.add_argument("--freq", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rate", type=int, default=16000, help="sample rate the SDK resamples to")
    sys.exit(asyncio.run(main(p.parse_args())))
