#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/corpus/<target>/seed-*) from the wire
shapes of the vendors' documentation (Twilio Media Streams, LiveKit signalling, the vendors'
streams, as the tests' fakes speak them). Protobuf is encoded by hand (field numbers from livekit-protocol 0.8) so this
needs nothing beyond Python. Re-run after changing a target's input format."""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "0" * 32


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def lines(*msgs):
    return "\n".join(m if isinstance(m, str) else json.dumps(m, separators=(",", ":")) for m in msgs)


# ---- protobuf, by hand --------------------------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def f_varint(tag, n):
    return varint(tag << 3) + varint(n)


def f_bytes(tag, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(tag << 3 | 2) + varint(len(b)) + b


def frame(flag, b):
    return struct.pack("<H", len(b) | (0x8000 if flag else 0)) + b


# ---- Twilio -------------------------------------------------------------------------------

def twilio():
    connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = {"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID, "start": {
        "accountSid": "AC" + "0" * 32, "streamSid": STREAM_SID, "callSid": CALL_SID, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"callSid": CALL_SID, "from": "+15550001111", "token": "1700000060.abc.sig"}}}

    def media(seq, chunk, payload=b"\xff" * 160, track="inbound"):
        return {"event": "media", "sequenceNumber": str(seq), "streamSid": STREAM_SID, "media": {
            "track": track, "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
            "payload": base64.b64encode(payload).decode()}}

    def mark(seq, name):
        return {"event": "mark", "sequenceNumber": str(seq), "streamSid": STREAM_SID, "mark": {"name": name}}

    dtmf = {"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": "9", "dtmf": {"track": "inbound_track", "digit": "1"}}
    stop = {"event": "stop", "sequenceNumber": "10", "streamSid": STREAM_SID, "stop": {"accountSid": "AC" + "0" * 32, "callSid": CALL_SID}}
    t = "twilio_media_stream"
    write(t, "call", lines(connected, start, media(2, 1), media(3, 2), media(4, 3), dtmf, stop))
    write(t, "gap-late-dup", lines(connected, start, media(2, 1), media(3, 5), media(4, 4), media(5, 5), media(6, 6, b"\x7f" * 37)))
    write(t, "marks", lines(connected, start, "#a", "#a", mark(5, "u1.1"), mark(6, "u1.2"), "#t", mark(7, "u1.9"), "#i", mark(8, "u1.3"), stop))
    write(t, "numbers", lines(connected, start, {"event": "media", "sequenceNumber": 2, "streamSid": STREAM_SID,
                                              "media": {"track": "inbound", "chunk": 18446744073709551615, "timestamp": 0, "payload": "/w=="}},
                             media(3, 1), media(4, 2, b"", "outbound")))
    write(t, "bad-start", lines(connected, {"event": "start", "streamSid": "MZx", "start": {"mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 2}}}))
    write(t, "unknown", lines({"event": "future", "x": 1}, connected, start, media(2, 1), {"event": "media"}, "not json"))

    # webhook: path?query \n signature \n form body
    token = "12345"
    url = "https://bridge.example.com/incoming-call"
    params = [("AccountSid", "AC" + "0" * 32), ("ApiVersion", "2010-04-01"), ("CallSid", CALL_SID), ("CallStatus", "ringing"),
              ("Direction", "inbound"), ("From", "+15550001111"), ("To", "+15550002222"), ("Caller", "+15550001111")]
    body = "&".join(f"{k}={v.replace('+', '%2B')}" for k, v in params)
    mac = hmac.new(token.encode(), url.encode() + b"".join((k + v).encode() for k, v in sorted(params)), hashlib.sha1)
    sig = base64.b64encode(mac.digest()).decode()
    write("twilio_webhook", "incoming-call", f"/incoming-call\n{sig}\n{body}")
    write("twilio_webhook", "call-status", f"/call-status?x=1\nAAAA\nCallSid={CALL_SID}&CallStatus=completed&CallDuration=42")
    write("twilio_webhook", "media-stream", "/media-stream\n" + sig + "\n")
    write("twilio_webhook", "json-body", "/incoming-call?bodySHA256=" + hashlib.sha256(b'{"a":1}').hexdigest() + "\nsig\n{\"a\":1}")
    write("twilio_webhook", "token", f"/incoming-call:443\nsig\nCallSid={CALL_SID}&token=1700000060.abcdef.AAAA&From=%2B1&From=%2B2")


def control():
    msgs = [
        {"v": 1, "type": "interrupt", "utterance_id": "b1"},
        {"v": 1, "type": "hangup", "reason": "caller said goodbye"},
        {"v": 1, "type": "transfer", "to": "sales"},
        {"v": 1, "type": "playback", "utterance_id": "b1", "heard_ms": 1240, "complete": False, "interrupted": True},
        {"v": 1, "type": "dtmf", "digit": "#"},
        {"v": 1, "type": "transcript", "role": "user", "text": "my name is Ada", "is_final": True, "fields": {"name": "Ada"}},
        {"v": 2, "type": "wave", "future": [1, 2]},
    ]
    write("control", "all", "#\n" + lines(*msgs))
    write("control", "barge-in", "#\n#\n" + lines({"v": 1, "type": "interrupt"}) + "\n#\n" + lines({"type": "interrupt"}))
    write("control", "malformed", b'\xff\xfe\n[]\n{"v":1}\n{"type":"transfer"}\n{"type":"playback","utterance_id":"a","heard_ms":-5}')


# ---- LiveKit ------------------------------------------------------------------------------

OFFER_FROM_SERVER = "\r\n".join([
    "v=0", "o=- 3917384522 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=extmap-allow-mixed", "a=msid-semantic: WMS",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:GtUo", "a=ice-pwd:Qw3ZRt7IjFhLQx1bdGfs1Ftp",
    "a=ice-options:trickle", "a=fingerprint:sha-256 2C:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:actpass", "a=mid:0", "a=sctp-port:5000", "a=max-message-size:262144",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=ice-ufrag:GtUo", "a=ice-pwd:Qw3ZRt7IjFhLQx1bdGfs1Ftp",
    "a=fingerprint:sha-256 2C:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:actpass", "a=mid:1", "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendonly",
    "a=msid:PA_agent1|TR_AMa1b2c3 TR_AMa1b2c3", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1", "a=ssrc:1001 cname:PA_agent1", "a=ssrc:1001 msid:PA_agent1|TR_AMa1b2c3 TR_AMa1b2c3",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host generation 0", "a=end-of-candidates", ""])

ANSWER_FROM_SERVER = "\r\n".join([
    "v=0", "o=- 1868245734 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0", "a=ice-lite",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:srvU", "a=ice-pwd:9fJk2LmQp0ZxY7vB3nC5dE1r",
    "a=fingerprint:sha-256 AA:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:passive", "a=mid:0", "a=sctp-port:5000", "a=max-message-size:262144",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host", "a=end-of-candidates", ""])

CLIENT_OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=extmap-allow-mixed", "a=msid-semantic: WMS PA_phone-stream",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:cLiE", "a=ice-pwd:x8Yb6u2Jq0ZxY7vB3nC5dE1r",
    "a=ice-options:trickle", "a=fingerprint:sha-256 BB:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:actpass", "a=mid:0", "a=sctp-port:5000", "a=max-message-size:262144",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "c=IN IP4 0.0.0.0", "a=ice-ufrag:cLiE", "a=ice-pwd:x8Yb6u2Jq0ZxY7vB3nC5dE1r",
    "a=fingerprint:sha-256 BB:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:actpass", "a=mid:1", "a=sendonly", "a=msid:PA_phone-stream TR_cid1", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1", "a=rtpmap:0 PCMU/8000", "a=ssrc:2002 cname:phone", ""])

ANSWER_FROM_CLIENT = "\r\n".join([
    "v=0", "o=- 5511731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=ice-ufrag:cLiA", "a=ice-pwd:z8Yb6u2Jq0ZxY7vB3nC5dE1r",
    "a=fingerprint:sha-256 CC:9B:4E:1D:6A:71:08:FB:5C:0E:52:33:A1:7D:90:4B:C8:2F:11:E6:7A:3D:55:98:04:B2:6C:E1:9F:70:3A:D4",
    "a=setup:active", "a=mid:0", "a=sctp-port:5000", "a=max-message-size:262144", ""])


def participant(sid, identity, kind=0, tracks=(), version=1, state=2, attrs=None):
    b = f_bytes(1, sid) + f_bytes(2, identity) + f_varint(3, state) + f_varint(10, version) + f_varint(14, kind)
    for t in tracks:
        b += f_bytes(4, t)
    for k, v in (attrs or {}).items():
        b += f_bytes(15, f_bytes(1, k) + f_bytes(2, v))
    return b


def track(sid, name="mic", muted=False):
    return f_bytes(1, sid) + f_varint(2, 0) + f_bytes(3, name) + f_varint(4, int(muted)) + f_varint(9, 2) + f_bytes(11, "audio/opus")


def session_description(kind, sdp, id_=1):
    return f_bytes(1, kind) + f_bytes(2, sdp) + f_varint(3, id_)


def livekit():
    agent = participant("PA_agent1", "agent-1", kind=4, tracks=[track("TR_AMa1b2c3")], attrs={"lk.agent.state": "listening"})
    agent_muted = participant("PA_agent1", "agent-1", kind=4, tracks=[track("TR_AMa1b2c3", muted=True)], version=2)
    agent_gone = participant("PA_agent1", "agent-1", kind=4, version=3, state=3)
    resp = [
        f_bytes(5, f_bytes(1, agent)),                                              # update
        f_bytes(3, session_description("offer", OFFER_FROM_SERVER)),                # offer
        f_bytes(4, f_bytes(1, json.dumps({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host", "sdpMid": "0", "sdpMLineIndex": 0})) + f_varint(2, 1)),
        f_bytes(2, session_description("answer", ANSWER_FROM_SERVER)),             # answer
        f_bytes(6, f_bytes(1, "cid1") + f_bytes(2, track("TR_local"))),             # track_published
        f_bytes(9, f_bytes(1, "TR_AMa1b2c3") + f_varint(2, 1)),                     # mute
        f_bytes(11, f_bytes(1, f_bytes(1, "RM_x") + f_bytes(2, "call-x") + f_bytes(8, "{\"m\":1}"))),  # room_update
        f_bytes(16, "eyJhbGciOi.refreshed.token"),                                  # refresh_token
        f_varint(18, 1700000000000),                                                # pong
        f_bytes(20, f_varint(1, 1700000000000) + f_varint(2, 1700000000010)),       # pong_resp
        f_bytes(5, f_bytes(1, agent_muted)),
        f_bytes(17, f_bytes(1, "TR_local")),                                        # track_unpublished
        f_bytes(5, f_bytes(1, agent_gone)),
        f_bytes(8, f_varint(1, 0) + f_varint(2, 4) + f_varint(3, 0)),               # leave
    ]
    user = f_varint(1, 0) + f_bytes(4, "agent-1") + f_bytes(2, f_bytes(2, b'{"v":1,"type":"interrupt"}') + f_bytes(4, "callbridge.control") + f_bytes(5, "agent-1"))
    dtmf = f_varint(1, 0) + f_bytes(6, f_varint(3, 1) + f_bytes(4, "1"))
    seq = b"".join(frame(False, r) for r in resp)
    write("room_signal", "session", seq + frame(True, b"\x00" + user) + frame(True, b"\x01" + dtmf))
    write("room_signal", "offer-only", frame(False, resp[1]) + frame(False, resp[2]))
    write("room_signal", "pong-extremes", frame(False, f_bytes(20, f_varint(1, -(1 << 63)) + f_varint(2, 0))) + frame(False, f_bytes(20, f_varint(1, (1 << 63) - 1))))
    write("room_signal", "leave-resume", frame(False, resp[0]) + frame(False, f_bytes(8, f_varint(1, 1) + f_varint(2, 4) + f_varint(3, 1))))

    req = [
        f_bytes(4, f_bytes(1, "cid1") + f_bytes(2, "mic") + f_varint(3, 0) + f_varint(8, 2)),   # add_track
        f_bytes(1, session_description("offer", CLIENT_OFFER)),                                  # offer
        f_bytes(3, f_bytes(1, json.dumps({"candidate": "candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0"})) + f_varint(2, 0)),
        f_bytes(2, session_description("answer", ANSWER_FROM_CLIENT)),                           # answer
        f_bytes(5, f_bytes(1, "TR_x") + f_varint(2, 1)),                                         # mute
        f_bytes(6, f_bytes(1, "TR_AMa1b2c3") + f_varint(2, 1)),                                  # subscription
        f_bytes(15, f_bytes(1, "{\"m\":2}") + f_bytes(2, "Phone") + f_bytes(3, f_bytes(1, "sip.callStatus") + f_bytes(2, "active")) + f_varint(4, 7)),
        f_bytes(16, f_varint(1, 1700000000000) + f_varint(2, 12)),                               # ping_req
        f_varint(14, 1700000000000),                                                             # ping
        f_bytes(6, f_bytes(1, "TR_AMa1b2c3") + f_varint(2, 0)),                                  # unsubscribe
        f_bytes(8, f_varint(1, 0) + f_varint(2, 1)),                                             # leave
    ]
    write("devroom_signal", "session", b"".join(frame(False, r) for r in req))
    write("devroom_signal", "json", frame(True, json.dumps({"addTrack": {"cid": "cid1", "name": "mic", "type": "AUDIO", "source": "MICROPHONE"}}).encode())
          + frame(True, json.dumps({"offer": {"type": "offer", "sdp": CLIENT_OFFER}}).encode())
          + frame(True, json.dumps({"trickle": {"candidateInit": "{\"candidate\":\"candidate:2 1 udp 1 127.0.0.1 50000 typ host\"}", "target": "PUBLISHER"}}).encode())
          + frame(True, json.dumps({"pingReq": {"timestamp": "1700000000000", "rtt": "3"}}).encode()))

    write("sdp", "room-subscriber-offer", b"\x00" + OFFER_FROM_SERVER.encode())
    write("sdp", "room-publisher-answer", b"\x01" + ANSWER_FROM_SERVER.encode())
    write("sdp", "devroom-publisher-offer", b"\x02" + CLIENT_OFFER.encode())
    write("sdp", "devroom-subscriber-answer", b"\x03" + ANSWER_FROM_CLIENT.encode())


# ---- vendors ------------------------------------------------------------------------------

def vendors():
    t = "vendor_streams"
    dg = [
        {"type": "Metadata", "request_id": "r1", "channels": 1},
        {"type": "SpeechStarted", "channel": [0], "timestamp": 0.5},
        {"type": "Results", "channel_index": [0, 1], "duration": 1.2, "start": 0.0, "is_final": False, "speech_final": False,
         "channel": {"alternatives": [{"transcript": "my name", "confidence": 0.91, "words": []}]}},
        {"type": "Results", "is_final": True, "speech_final": False, "channel": {"alternatives": [{"transcript": "my name is Ada", "confidence": 0.97}]}},
        {"type": "Results", "is_final": True, "speech_final": True, "channel": {"alternatives": [{"transcript": " thanks ", "confidence": 0.9}]}},
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.1},
        {"type": "Error", "description": "bad audio", "message": "x"},
    ]
    write(t, "deepgram", b"\x00" + lines(*dg).encode())
    pcm_b64 = base64.b64encode(struct.pack("<8h", 0, 1000, 2000, 1000, 0, -1000, -2000, -1000)).decode()
    ulaw_b64 = base64.b64encode(b"\xff\x80\x00\x7f" * 10).decode()
    rt = [
        {"type": "session.created", "session": {"id": "sess_1"}},
        {"type": "session.updated"},
        {"type": "input_audio_buffer.speech_started", "item_id": "item_1", "audio_start_ms": 120},
        {"type": "input_audio_buffer.speech_stopped", "item_id": "item_1", "audio_end_ms": 1820},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "transcript": "hello"},
        {"type": "response.created", "response": {"id": "resp_1"}},
        {"type": "response.output_audio.delta", "item_id": "item_2", "delta": ulaw_b64},
        {"type": "response.audio_transcript.delta", "item_id": "item_2", "delta": "Hi"},
        {"type": "response.output_item.added", "item": {"type": "function_call", "call_id": "call_1", "name": "transfer"}},
        {"type": "response.function_call_arguments.done", "call_id": "call_1", "arguments": "{\"to\":\"sales\"}"},
        {"type": "response.output_item.done", "item": {"type": "function_call", "call_id": "call_1", "name": "transfer", "arguments": "{}"}},
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}},
        {"type": "error", "error": {"code": "rate_limit_exceeded", "message": "slow down"}},
    ]
    write(t, "realtime", b"\x01" + lines(*rt).encode())
    write(t, "realtime-error-first", b"\x01" + lines({"type": "error", "error": {"code": "invalid_api_key", "message": "no"}}).encode())
    ca = [
        {"type": "chunk", "context_id": "ctx-1", "data": pcm_b64, "done": False, "status_code": 206},
        {"type": "chunk", "context_id": "ctx-0", "data": pcm_b64},
        {"type": "timestamps", "context_id": "ctx-1", "word_timestamps": {"words": ["hi"], "start": [0.0], "end": [0.2]}},
        {"type": "chunk", "context_id": "ctx-1", "data": base64.b64encode(b"\x01\x02\x03").decode()},
        {"type": "flush_done", "context_id": "ctx-1"},
        {"type": "done", "context_id": "ctx-1", "status_code": 206},
    ]
    write(t, "cartesia", b"\x02" + lines(*ca).encode())
    write(t, "cartesia-error", b"\x02" + lines({"type": "error", "context_id": "ctx-1", "status_code": 429, "title": "Too many", "error": "quota"}).encode())
    el = [
        {"audio": pcm_b64, "isFinal": None, "normalizedAlignment": {"chars": ["H"], "charStartTimesMs": [0], "charsDurationsMs": [50]}},
        {"audio": base64.b64encode(b"\x01\x02\x03").decode(), "isFinal": False},
        {"audio": "", "isFinal": True},
    ]
    write(t, "elevenlabs", b"\x03" + lines(*el).encode())
    write(t, "elevenlabs-error", b"\x03" + lines({"message": "Invalid API key", "error": "auth_error", "code": 1008}).encode())
    write(t, "ulaw", b"\x04" + lines({"type": "chunk", "context_id": "ctx-1", "data": ulaw_b64}, {"audio": ulaw_b64, "isFinal": False}, {"isFinal": True}).encode())
    chunks = [
        {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello, "}, "finish_reason": None}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "transfer", "arguments": "{\"to\""}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":\"sales\"}"}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "x_groq": {"id": "req_1"}},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
    ]
    body = "".join("data: " + json.dumps(c) + "\n\n" for c in chunks) + ": keep-alive\n\ndata: [DONE]\n\n"
    b = body.encode()
    write(t, "chat-sse", b"\x05" + b[:50] + b"\x1e" + b[50:51] + b"\x1e" + b[51:].replace(b"\n\n", b"\r\n\r\n", 2))
    write(t, "chat-sse-error", b"\x05" + b'data: {"error":{"message":"model overloaded","type":"server_error"}}\n\n')
    write(t, "chat-sse-groq-error", b"\x05" + b'data: {"choices":[],"x_groq":{"error":{"message":"tool call failed"}}}\n\n')
    write(t, "chat-sse-no-done", b"\x05" + body.split("data: [DONE]")[0].encode())


if __name__ == "__main__":
    twilio()
    control()
    livekit()
    vendors()
    print("seeds written under", ROOT, file=sys.stderr)
