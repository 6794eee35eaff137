"""Sound classification with an audio backbone, offline, on synthesized sounds.

Three classes of clips (steady tones, rising chirps, noise bursts) of
different lengths are written as 44.1 kHz stereo FLAC files; a
``PretrainedFeatureTransformer`` reads them a batch at a time, mixes them
down, resamples them to the model's 16 kHz and embeds them (mean over the
frames that hold sound); a logistic regression learns the classes. Then
``layers=`` fuses a middle and the last transformer layer, as speech models'
middle layers often transfer best.

What this can and cannot show: the model is a small wav2vec2 built from a
config with *random* weights (no download on this machine), so the
accuracies below say that the code path works and that even random
convolutions separate such different sounds, not how well pretrained speech
features transfer. With real weights the code is the same: replace
``MODEL`` by ``"hf:facebook/wav2vec2-base"`` (or HuBERT, WavLM, Whisper's
encoder via ``"hf:openai/whisper-tiny"``, AST).
"""

import os
import tempfile

import numpy as np
import soundfile as sf
import torch
import transformers as tf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureTransformer

QUICK = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
N_PER_CLASS = 8 if QUICK else 30
RATE = 44100


def sound(label, rng):
    seconds = rng.uniform(0.3, 0.8)
    t = np.arange(int(RATE * seconds)) / RATE
    if label == 0:    # a steady tone
        wave = np.sin(2 * np.pi * rng.uniform(200, 600) * t)
    elif label == 1:  # a chirp rising over the clip
        f0, f1 = rng.uniform(200, 400), rng.uniform(2000, 4000)
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    else:             # a noise burst
        wave = rng.randn(t.size)
    return 0.3 * wave / np.abs(wave).max()


def main():
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    # The quick run narrows the convolutional feature encoder (512 channels in
    # each of its 7 layers by default, most of the compute on these clips).
    narrow = dict(conv_dim=(32,) * 7) if QUICK else {}
    config = tf.Wav2Vec2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=128, feat_extract_norm="layer",
                               do_stable_layer_norm=True, **narrow)
    tf.Wav2Vec2Model(config).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True,
                                do_normalize=True).save_pretrained(folder)
    model = f"hf:{folder}"

    rng = np.random.RandomState(0)
    paths, labels = [], []
    for i in range(3 * N_PER_CLASS):
        label = i % 3
        wave = sound(label, rng)
        paths.append(os.path.join(folder, f"clip{i:03d}.flac"))
        sf.write(paths[-1], np.stack([wave, wave], axis=1), RATE, subtype="PCM_16")
        labels.append(label)
    labels = np.array(labels)

    for name, layers in (("embedding (last layer)", None),
                         ("layers 1 + 3 fused", ["model.encoder.layers.1",
                                                 "model.encoder.layers.3"])):
        pipe = make_pipeline(PretrainedFeatureTransformer(model, layers=layers, batch_size=8),
                             StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_val_score(pipe, paths, labels, cv=4)
        print(f"{name}: accuracy {scores.mean():.2f} (chance 0.33)")


if __name__ == "__main__":
    main()
