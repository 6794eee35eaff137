"""Tiny audio models (random weights, ``save_pretrained`` with their feature
extractor configs) and synthesized sounds, for the audio tests."""

import numpy as np

RATE = 16000


def _save(model, extractor, path):
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return str(path)


def _waveform_extractor(attention_mask):
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=attention_mask)


def _waveform_sizes():
    # A stride of 20 samples (800 frames a second), small widths.
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def build(kind, path, seed=0):
    """Save a tiny ``kind`` model with its feature extractor in ``path``; return the path.

    ``kind``: "wav2vec2-layer", "wav2vec2-group", "hubert", "wavlm", "data2vec-audio",
    "whisper" or "ast".
    """
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind in ("wav2vec2-layer", "wav2vec2-group"):
        norm = kind.rpartition("-")[2]
        config = tf.Wav2Vec2Config(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
                                   **_waveform_sizes())
        return _save(tf.Wav2Vec2Model(config), _waveform_extractor(norm == "layer"), path)
    if kind == "hubert":
        config = tf.HubertConfig(feat_extract_norm="group", **_waveform_sizes())
        return _save(tf.HubertModel(config), _waveform_extractor(False), path)
    if kind == "wavlm":
        config = tf.WavLMConfig(feat_extract_norm="layer", num_buckets=16, max_bucket_distance=64,
                                **_waveform_sizes())
        return _save(tf.WavLMModel(config), _waveform_extractor(True), path)
    if kind == "data2vec-audio":
        sizes = {k: v for k, v in _waveform_sizes().items() if k != "num_conv_pos_embedding_groups"}
        config = tf.Data2VecAudioConfig(num_conv_pos_embeddings=3, **{
            k: v for k, v in sizes.items() if k != "num_conv_pos_embeddings"})
        return _save(tf.Data2VecAudioModel(config), _waveform_extractor(True), path)
    if kind == "whisper":
        # A 2 s window of 16 mel bins: 200 mel frames, 100 encoder frames.
        config = tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                                  max_source_positions=100, max_target_positions=16,
                                  vocab_size=64, pad_token_id=1, bos_token_id=2,
                                  eos_token_id=3, decoder_start_token_id=2,
                                  suppress_tokens=None, begin_suppress_tokens=None)
        extractor = tf.WhisperFeatureExtractor(feature_size=16, sampling_rate=RATE,
                                               hop_length=160, chunk_length=2, n_fft=400)
        return _save(tf.WhisperModel(config), extractor, path)
    if kind == "ast":
        config = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=37, patch_size=16, num_mel_bins=32,
                              max_length=64, frequency_stride=16, time_stride=16)
        extractor = tf.ASTFeatureExtractor(num_mel_bins=32, max_length=64, sampling_rate=RATE)
        return _save(tf.ASTModel(config), extractor, path)
    raise ValueError(kind)


def tone(freq, seconds, rate=RATE, amplitude=0.5, phase=0.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def chirp(f0, f1, seconds, rate=RATE, amplitude=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def noise(seconds, rate=RATE, seed=0, amplitude=0.3):
    rng = np.random.RandomState(seed)
    return (amplitude * rng.randn(int(round(seconds * rate)))).astype(np.float32)
