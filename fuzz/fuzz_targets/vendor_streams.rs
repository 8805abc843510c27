//! Each vendor's streamed messages as the agent parses them (agent/src/providers/*.rs). The
//! first byte picks the vendor; for the WebSocket vendors every following line is one text
//! frame, fed until the reader would stop:
//! 0 Deepgram `Results`/`UtteranceEnd`…, 1 OpenAI Realtime events (the first must be
//! `session.created`), 2 Cartesia (PCM s16le) and 3 ElevenLabs (PCM 16 kHz) TTS messages,
//! 4 Cartesia and ElevenLabs in μ-law. 5 is an OpenAI/Groq chat completion body (SSE), cut
//! into network reads at each 0x1E byte.

#![no_main]
use agent::providers::cartesia::{self, CartesiaEncoding, Outcome};
use agent::providers::deepgram::DeepgramDecoder;
use agent::providers::elevenlabs::{self, ElevenLabsFormat};
use agent::providers::http_util::Pcm16Le;
use agent::providers::openai_chat::{ChatStream, SseParser};
use agent::providers::openai_realtime::{check_first_event, Decoder};
use callbridge_fuzz::text_lines;
use libfuzzer_sys::fuzz_target;

fn deepgram(data: &[u8]) {
    let mut d = DeepgramDecoder::default();
    let mut out = Vec::new();
    for line in text_lines(data) {
        if d.on_text(line, &mut out).is_err() {
            break;
        }
        out.clear();
    }
    d.finish(&mut out);
}

fn realtime(data: &[u8]) {
    let mut lines = text_lines(data);
    let Some(first) = lines.next() else { return };
    if check_first_event(first).is_err() {
        return;
    }
    let mut d = Decoder::default();
    for line in lines {
        if d.on_text(line).is_err() {
            break;
        }
    }
}

fn cartesia(data: &[u8], encoding: CartesiaEncoding) {
    let mut pcm = Pcm16Le::default();
    for line in text_lines(data) {
        let Ok(resp) = cartesia::Response::parse(line) else { break };
        if !resp.is_for("ctx-1") {
            continue;
        }
        if let Outcome::Finished(_) = cartesia::handle_response(resp, &mut pcm, encoding) {
            break;
        }
    }
}

fn elevenlabs(data: &[u8], format: ElevenLabsFormat) {
    let mut pcm = Pcm16Le::default();
    for line in text_lines(data) {
        match elevenlabs::decode_message(line, format, &mut pcm) {
            Ok(d) if !d.is_final => {}
            _ => break,
        }
    }
}

fn chat_sse(data: &[u8]) {
    let mut sse = SseParser::default();
    let mut state = ChatStream::default();
    let mut out = Vec::new();
    for read in data.split(|b| *b == 0x1e) {
        for event in sse.push(read) {
            let done = state.on_data("openai", &event, &mut out);
            let failed = out.iter().any(|e| e.is_err());
            out.clear();
            if done || failed {
                return;
            }
        }
        if sse.overflowed() {
            return;
        }
    }
    let _ = state.finish_without_done("openai");
}

fuzz_target!(|data: &[u8]| {
    let Some((&vendor, rest)) = data.split_first() else { return };
    match vendor % 6 {
        0 => deepgram(rest),
        1 => realtime(rest),
        2 => cartesia(rest, CartesiaEncoding::PcmS16le),
        3 => elevenlabs(rest, ElevenLabsFormat::Pcm16000),
        4 => {
            cartesia(rest, CartesiaEncoding::PcmMulaw);
            elevenlabs(rest, ElevenLabsFormat::Ulaw8000);
        }
        _ => chat_sse(rest),
    }
});
