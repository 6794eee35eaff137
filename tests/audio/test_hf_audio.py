"""Speech and audio backbones: tiny models built from configs (random weights,
saved with their feature extractor configs) on sounds the tests synthesize."""

import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureTransformer

from .tiny import RATE, chirp, noise, tone

pytest.importorskip("soundfile")
pytest.importorskip("soxr")

KINDS = ["wav2vec2-layer", "wav2vec2-group", "hubert", "wavlm", "data2vec-audio", "whisper",
         "ast"]


def clips():
    # Different lengths, so batches pad.
    return [tone(440, 0.5), noise(0.31, seed=1), chirp(200, 3000, 0.42), tone(1000, 0.2)]


def by_hand(path, clip):
    """The feature extractor and the model, written out for one clip alone."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(path)
    fe = tf.AutoFeatureExtractor.from_pretrained(path)
    with torch.no_grad():
        if config.model_type == "whisper":
            encoder = tf.WhisperModel.from_pretrained(path).get_encoder().eval()
            feats = fe([clip], sampling_rate=RATE, return_tensors="pt")["input_features"]
            hidden = encoder(feats).last_hidden_state[0]
            mel_frames = -(-len(clip) // fe.hop_length)
            return hidden[:(mel_frames - 1) // 2 + 1].mean(0).numpy()
        model = tf.AutoModel.from_pretrained(path).eval()
        inputs = fe([clip], sampling_rate=RATE, return_tensors="pt")
        out = model(**inputs)
        if config.model_type == "audio-spectrogram-transformer":
            return out.pooler_output[0].numpy()
        frames = int(model._get_feat_extract_output_lengths(torch.tensor(len(clip))))
        assert out.last_hidden_state.shape[1] == frames  # alone: no frame is padding
        return out.last_hidden_state[0].mean(0).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_are_the_extractor_and_model_by_hand(models, kind):
    path = models(kind)
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE, batch_size=4)
    ours = pft.fit_transform(clips())
    expected = np.stack([by_hand(path, c) for c in clips()])
    assert pft.backbone_.modality == "audio" and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("kind", KINDS)
def test_a_clip_padded_in_a_batch_is_the_clip_alone(models, kind):
    pft = PretrainedFeatureTransformer(f"hf:{models(kind)}", sampling_rate=RATE,
                                       batch_size=4).fit(clips())
    together = pft.transform(clips())
    alone = np.vstack([pft.transform([c]) for c in clips()])
    np.testing.assert_allclose(together, alone, atol=1e-5 * np.abs(alone).max())
    # and with chosen layers, whose frames are masked alike
    layer = "model.layers.1" if kind in ("whisper", "ast") else "model.encoder.layers.1"
    fused = PretrainedFeatureTransformer(f"hf:{models(kind)}", sampling_rate=RATE,
                                         layers=[layer], batch_size=4).fit(clips())
    np.testing.assert_allclose(fused.transform(clips()),
                               np.vstack([fused.transform([c]) for c in clips()]), atol=1e-4)


def test_frame_mask_follows_the_models_own_output_lengths(models):
    import transformers as tf

    from sktransfer import load_backbone

    path = models("wav2vec2-layer")
    bb = load_backbone(f"hf:{path}")
    batch = bb.preprocess([tone(300, 0.5), tone(300, 0.13)])
    model = tf.AutoModel.from_pretrained(path)
    lengths = model._get_feat_extract_output_lengths(torch.tensor([8000, 2080]))
    assert batch["frame_mask"].sum(1).tolist() == lengths.tolist()


def test_the_conv_encoders_output_is_pooled_over_its_frames_at_any_length(models):
    # A clip whose frame count equals the encoder's channel count looks like a
    # (B, T, D) output; the layer's layout is known by module, not by shape.
    import transformers as tf

    from sktransfer import load_backbone

    path = models("wav2vec2-layer")
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE,
                                       layers=["model.feature_extractor"]).fit(clips())
    model = tf.AutoModel.from_pretrained(path).eval()
    channels = model.config.conv_dim[-1]
    frames = model._get_feat_extract_output_lengths(torch.arange(200, 800))
    length = 200 + int(np.flatnonzero(frames.numpy() == channels)[0])
    clip = chirp(200, 900, 1.0)[:length]
    values = load_backbone(f"hf:{path}").preprocess([clip])["input_values"]
    with torch.no_grad():
        expected = model.feature_extractor(values).mean(2).numpy()  # (1, C, T) over T
    assert model.feature_extractor(values).shape[1:] == (channels, channels)
    np.testing.assert_allclose(pft.transform([clip]), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["wav2vec2-layer", "whisper"])
def test_the_same_sound_at_8_and_16_khz_gives_nearly_the_same_embedding(models, kind):
    # Band-limited sounds (below 4 kHz, the Nyquist frequency of 8 kHz) synthesized at each rate.
    make = [lambda r: chirp(150, 3000, 0.5, rate=r), lambda r: tone(500, 0.4, rate=r)
            + tone(1800, 0.4, rate=r, amplitude=0.2)]
    at8 = PretrainedFeatureTransformer(f"hf:{models(kind)}", sampling_rate=8000)
    at16 = PretrainedFeatureTransformer(f"hf:{models(kind)}", sampling_rate=16000)
    e8 = at8.fit_transform([m(8000) for m in make])
    e16 = at16.fit_transform([m(16000) for m in make])
    scale = np.linalg.norm(e16, axis=1)
    gap_between_sounds = np.linalg.norm(e16[0] - e16[1])
    assert (np.linalg.norm(e8 - e16, axis=1) < 0.02 * scale).all()
    assert np.linalg.norm(e8 - e16, axis=1).max() < 0.1 * gap_between_sounds


def test_files_in_every_format_rate_and_width_embed_like_arrays(models, tmp_path):
    import soundfile as sf

    path = models("wav2vec2-layer")
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE)
    reference = pft.fit_transform([chirp(200, 3000, 0.5)])
    files = []
    for rate in (8000, 16000, 44100):
        sound = chirp(200, 3000, 0.5, rate=rate)
        for fmt, subtype in (("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16")):
            for channels in (1, 2):
                data = sound if channels == 1 else np.stack([sound, sound], axis=1)
                name = tmp_path / f"{rate}-{subtype}-{channels}.{fmt.lower()}"
                sf.write(str(name), data, rate, format=fmt, subtype=subtype)
                files.append(str(name))
    embedded = pft.transform(files)
    gaps = np.linalg.norm(embedded - reference, axis=1) / np.linalg.norm(reference)
    assert gaps.max() < 0.02, dict(zip(files, gaps.round(4)))
    # int16 arrays are scaled like int16 files; the 16 kHz float file is the array itself
    as_int16 = (chirp(200, 3000, 0.5) * 32767).astype(np.int16)
    np.testing.assert_allclose(pft.transform([as_int16]), reference, atol=1e-3)
    np.testing.assert_allclose(embedded[files.index(str(tmp_path / "16000-FLOAT-1.wav"))],
                               reference[0], atol=1e-5)


def test_clear_errors(models, tmp_path):
    path = models("wav2vec2-group")
    with pytest.raises(ValueError, match="sampling_rate="):
        PretrainedFeatureTransformer(f"hf:{path}").fit([tone(440, 0.2)])
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE)
    with pytest.raises(ValueError, match="clip 1 is empty"):
        pft.fit([tone(440, 0.2), np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        pft.fit([np.full(100, np.nan, np.float32)])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really sound")
    with pytest.raises(ValueError, match="corrupt.wav.*not an audio file"):
        pft.fit([str(corrupt)])
    with pytest.raises(FileNotFoundError, match="missing.flac"):
        pft.fit([str(tmp_path / "missing.flac")])
    with pytest.raises(ValueError, match="longer than the 2 s"):
        PretrainedFeatureTransformer(f"hf:{models('whisper')}", sampling_rate=RATE,
                                     max_duration=5).fit([tone(440, 0.2)])


def test_long_clips_are_truncated_to_max_duration(models):
    pft = PretrainedFeatureTransformer(f"hf:{models('wav2vec2-layer')}", sampling_rate=RATE,
                                       max_duration=0.25)
    long, start = noise(1.0, seed=3), noise(1.0, seed=3)[:4000]
    np.testing.assert_allclose(pft.fit_transform([long]),
                               PretrainedFeatureTransformer(
                                   f"hf:{models('wav2vec2-layer')}",
                                   sampling_rate=RATE).fit_transform([start]), atol=1e-5)


def test_a_pipeline_tells_synthetic_classes_apart(models):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(0)
    X, y = [], []
    for i in range(24):
        label = i % 2
        seconds = rng.uniform(0.2, 0.35)
        sound = (tone(rng.uniform(200, 400), seconds) if label == 0
                 else noise(seconds, seed=i))
        X.append(sound)
        y.append(label)
    y = np.array(y)
    pipe = make_pipeline(PretrainedFeatureTransformer(f"hf:{models('wav2vec2-layer')}",
                                                      sampling_rate=RATE),
                         StandardScaler(), LogisticRegression(max_iter=1000))
    pipe.fit(X[:16], y[:16])
    assert pipe.score(X[16:], y[16:]) >= 0.875


def test_ast_layers_pool_the_summary_tokens_and_the_patches_that_hold_sound(models):
    import transformers as tf

    path = models("ast")
    # The tiny AST: a 64-frame window, 16x16 patches: 2 frequency rows of 4
    # time columns, after the CLS and distillation tokens. 0.2 s is 18 Kaldi
    # frames (patch columns starting at frames 0 and 16 hold sound), 0.5 s is
    # 48 (columns at 0, 16 and 32).
    sounds, columns = [tone(440, 0.2), noise(0.5, seed=2)], [2, 3]
    layers = ["model.layers.0", "model.layers.1"]
    pft = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE, layers=layers,
                                       batch_size=4)
    ours = pft.fit_transform(sounds)
    model = tf.AutoModel.from_pretrained(path).eval()
    fe = tf.AutoFeatureExtractor.from_pretrained(path)
    seen = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple)
                                                      else out))
    with torch.no_grad():
        model(**fe(sounds, sampling_rate=RATE, return_tensors="pt"))
    expected, everything = [], []
    for row, n in enumerate(columns):
        tokens = [0, 1] + [2 + f * 4 + t for f in range(2) for t in range(n)]
        expected.append(np.concatenate([seen[i][row, tokens].mean(0).numpy() for i in (0, 1)]))
        everything.append(np.concatenate([seen[i][row].mean(0).numpy() for i in (0, 1)]))
    np.testing.assert_allclose(ours, np.stack(expected), atol=1e-5)
    # the patches of padding alone are left out of the mean
    assert not np.allclose(ours[0], everything[0], atol=1e-3)
    # the embedding stays AST's own pooled output; "cls" is the CLS token
    assert pft.backbone_.preprocess(sounds)["frame_mask"].sum(1).tolist() == [6, 8]
    cls = PretrainedFeatureTransformer(f"hf:{path}", sampling_rate=RATE, pooling="cls")
    with torch.no_grad():
        last = model(**fe(sounds, sampling_rate=RATE, return_tensors="pt")).last_hidden_state
    np.testing.assert_allclose(cls.fit_transform(sounds), last[:, 0].numpy(), atol=1e-5)
    # a pickle keeps the patch geometry (the mask is rebuilt, not lost)
    import pickle

    np.testing.assert_allclose(pickle.loads(pickle.dumps(pft)).transform(sounds), ours,
                               atol=1e-6)
