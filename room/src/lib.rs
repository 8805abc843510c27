//! LiveKit participant without libwebrtc (filled by issue 3).
