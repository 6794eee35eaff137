"""A sentence-transformers model embeds as ``SentenceTransformer.encode`` does.

Each model is written by sentence-transformers itself (its own module
classes and ``save``) around a tiny random BERT, so every setting a real
model's authors can write down is exercised: each pooling mode, several at
once, ``Dense`` and ``Normalize``, prompts (by default, by name, as text, and
left out of the pooling), ``max_seq_length`` and lower casing.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureTransformer

st = pytest.importorskip("sentence_transformers")
modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")

TEXTS = ["the cat sat on the mat", "a dog ran far", "  Big Red cat  ", "blue",
         "the small red dog sat on a big blue mat and the cat ran far " * 3]


def write_model(folder, base, *, pooling="mean", include_prompt=True, dense=(),
                normalize=False, max_seq_length=32, lower=False, prompts=None,
                default_prompt_name=None, padding_side=None):
    """A sentence-transformers model around the tiny BERT at ``base``, saved to ``folder``."""
    transformer = modules.Transformer(base, max_seq_length=max_seq_length, do_lower_case=lower)
    if padding_side is not None:
        transformer.tokenizer.padding_side = padding_side
    pipeline = [transformer, modules.Pooling(32, pooling_mode=pooling,
                                             include_prompt=include_prompt)]
    width = pipeline[-1].get_embedding_dimension()
    torch.manual_seed(1)
    for out, activation in dense:
        pipeline.append(modules.Dense(width, out, activation_function=activation))
        width = out
    if normalize:
        pipeline.append(modules.Normalize())
    model = st.SentenceTransformer(modules=pipeline, prompts=prompts,
                                   default_prompt_name=default_prompt_name, device="cpu")
    model.save(str(folder))
    return str(folder)


def assert_same_embeddings(ours, theirs):
    """Cosine >= 0.99999 and norms equal to 1e-5 relative, sentence by sentence."""
    assert ours.shape == theirs.shape
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1)
                                       * np.linalg.norm(theirs, axis=1))
    assert cosine.min() >= 0.99999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1),
                               rtol=1e-5)


def encode(folder, texts=TEXTS, **kwargs):
    return st.SentenceTransformer(folder, device="cpu").encode(texts, **kwargs)


def embed(spec, texts=TEXTS, **params):
    return PretrainedFeatureTransformer(spec, device="cpu", batch_size=2,
                                        **params).fit(texts).transform(texts)


@pytest.mark.parametrize("pooling", ["cls", "max", "mean", "mean_sqrt_len_tokens",
                                     "weightedmean", "lasttoken", ("cls", "mean")])
def test_each_pooling_mode_matches_sentence_transformers(tmp_path, tiny_bert_path, pooling):
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling=pooling)
    assert_same_embeddings(embed("hf:" + folder), encode(folder))


@pytest.mark.parametrize("pooling", ["cls", "weightedmean", "lasttoken"])
def test_left_padded_batches_pool_the_same_tokens(tmp_path, tiny_bert_path, pooling):
    # Decoder embedders pad on the left: the first, last and weighted
    # positions must count from the real tokens, not the padding.
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling=pooling, padding_side="left")
    assert_same_embeddings(embed("hf:" + folder), encode(folder))


def test_dense_and_normalize_give_unit_length_projected_embeddings(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling=("cls", "mean"),
                         dense=[(24, torch.nn.Tanh()), (8, torch.nn.Identity())],
                         normalize=True)
    ours = embed("hf:" + folder)
    assert ours.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    assert_same_embeddings(ours, encode(folder))
    assert PretrainedFeatureTransformer("hf:" + folder).fit(TEXTS).n_features_out_ == 8


def test_max_seq_length_truncates_and_lower_case_applies(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, max_seq_length=6, lower=True)
    texts = ["The Cat SAT on the mat and ran far away", "THE DOG"]
    assert_same_embeddings(embed("hf:" + folder, texts), encode(folder, texts))
    assert not np.allclose(embed("hf:" + folder, texts[:1]),
                           embed("hf:" + write_model(tmp_path / "long", tiny_bert_path),
                                 texts[:1]))


PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_by_default_by_name_and_as_text(tmp_path, tiny_bert_path, include_prompt):
    folder = write_model(tmp_path / "m", tiny_bert_path, prompts=PROMPTS,
                         default_prompt_name="query", include_prompt=include_prompt)
    spec = "hf:" + folder
    assert_same_embeddings(embed(spec), encode(folder))  # the model's default prompt
    assert_same_embeddings(embed(spec, prompt="passage"), encode(folder, prompt_name="passage"))
    assert_same_embeddings(embed(spec, prompt="a dog: "), encode(folder, prompt="a dog: "))
    assert_same_embeddings(embed(spec, prompt=""), encode(folder, prompt=""))
    assert not np.allclose(embed(spec), embed(spec, prompt=""))


def test_prompt_on_an_image_backbone_is_refused():
    pft = PretrainedFeatureTransformer("torchvision:resnet18", weights=None, image_size=16,
                                       prompt="query")
    with pytest.raises(ValueError, match="prompt='query' is prepended to texts"):
        pft.fit(np.zeros((2, 16, 16, 3), dtype=np.uint8))


def test_pooling_parameter_overrides_the_pipeline_and_keeps_dense(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling="cls",
                         dense=[(8, torch.nn.Tanh())], normalize=True)
    mean_folder = write_model(tmp_path / "mean", tiny_bert_path, pooling="mean",
                              dense=[(8, torch.nn.Tanh())], normalize=True)
    # The same seeded Dense weights: overriding cls by mean gives the mean model.
    assert_same_embeddings(embed("hf:" + folder, pooling="mean"), encode(mean_folder))
    overridden = PretrainedFeatureTransformer("hf:" + folder, pooling="max").fit(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(overridden.transform(TEXTS), axis=1), 1.0,
                               rtol=1e-5)
    # A Dense layer that takes two pooled vectors cannot take one.
    wide = write_model(tmp_path / "wide", tiny_bert_path, pooling=("cls", "mean"),
                       dense=[(8, torch.nn.Tanh())])
    with pytest.raises(ValueError, match="gives 32 features, but the first Dense module"):
        PretrainedFeatureTransformer("hf:" + wide, pooling="max").fit(TEXTS)


def test_an_untrusted_dense_activation_is_refused_by_name(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, dense=[(8, torch.nn.Tanh())])
    config_path = os.path.join(folder, "2_Dense", "config.json")
    config = json.load(open(config_path))
    config["activation_function"] = "os.system"
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="'os.system' is not a torch.nn module class"):
        PretrainedFeatureTransformer("hf:" + folder).fit(TEXTS)


def test_a_module_it_cannot_reproduce_is_named(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path)
    listing = json.load(open(os.path.join(folder, "modules.json")))
    listing.append({"idx": 2, "name": "2", "path": "2_LayerNorm",
                    "type": "sentence_transformers.sentence_transformer.modules.LayerNorm"})
    json.dump(listing, open(os.path.join(folder, "modules.json"), "w"))
    with pytest.raises(ValueError, match="LayerNorm"):
        PretrainedFeatureTransformer("hf:" + folder).fit(TEXTS)


def test_a_plain_transformers_directory_keeps_mean_pooling(tiny_bert_path):
    plain = embed("hf:" + tiny_bert_path)
    assert np.allclose(plain, embed("hf:" + tiny_bert_path, pooling="avg"))
    assert not np.allclose(np.linalg.norm(plain, axis=1), 1.0)


def test_saved_and_pickled_pipelines_embed_alike_in_a_fresh_offline_process(
        tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling=("cls", "weightedmean"),
                         include_prompt=False, dense=[(8, torch.nn.Tanh())], normalize=True,
                         prompts=PROMPTS, default_prompt_name="query")
    expected = encode(folder, prompt_name="passage")
    pft = PretrainedFeatureTransformer("hf:" + folder, prompt="passage").fit(TEXTS)
    sktransfer.save(pft, tmp_path / "model.skt")
    joblib.dump(pft, tmp_path / "model.joblib")
    np.save(tmp_path / "expected.npy", expected)
    json.dump(TEXTS, open(tmp_path / "texts.json", "w"))
    shutil.rmtree(folder)  # everything needed travels in the files
    code = textwrap.dedent("""
        import json, sys, joblib, numpy as np, sktransfer
        d = sys.argv[1]
        texts, expected = json.load(open(d + "/texts.json")), np.load(d + "/expected.npy")
        for model in (sktransfer.load(d + "/model.skt"), joblib.load(d + "/model.joblib")):
            out = model.transform(texts)
            norms = np.linalg.norm(out, axis=1), np.linalg.norm(expected, axis=1)
            assert ((out * expected).sum(1) / norms[0] / norms[1]).min() >= 0.99999
            np.testing.assert_allclose(*norms, rtol=1e-5)
        print("same")
    """)
    env = {"PATH": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "no-cache")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "same" in result.stdout


def test_a_fine_tuner_trains_on_the_pipelines_embedding(tmp_path, tiny_bert_path):
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling="cls",
                         dense=[(8, torch.nn.Tanh())], normalize=True, prompts=PROMPTS,
                         default_prompt_name="query")
    texts = ["the cat sat", "a cat ran", "the big cat", "a red cat",
             "the dog sat", "a dog ran", "the big dog", "a red dog"] * 2
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 2)
    clf = FineTunedClassifier("hf:" + folder, prompt="passage", max_epochs=30, lr=3e-3,
                              batch_size=8, random_state=0, device="cpu").fit(texts, labels)
    assert clf.n_features_out_ == 8
    assert clf.backbone_.preprocess.prompt == "passage: "
    assert clf.score(texts, labels) == 1.0


def test_the_onnx_runtime_runs_the_whole_pipeline(tmp_path, tiny_bert_path):
    pytest.importorskip("onnxruntime")
    # Prompt tokens left out of the pooling travel as an extra input of the graph.
    folder = write_model(tmp_path / "m", tiny_bert_path, pooling=("cls", "weightedmean"),
                         include_prompt=False, dense=[(8, torch.nn.Tanh())], normalize=True,
                         prompts=PROMPTS, default_prompt_name="query")
    assert_same_embeddings(embed("hf:" + folder, runtime="onnx"), encode(folder))


def test_a_local_state_dict_loads_into_the_whole_pipeline(tmp_path, tiny_bert_path):
    from safetensors.torch import save_file

    folder = write_model(tmp_path / "m", tiny_bert_path, dense=[(8, torch.nn.Tanh())],
                         normalize=True)
    fitted = PretrainedFeatureTransformer("hf:" + folder).fit(TEXTS)
    whole = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in fitted.backbone_.module.state_dict().items()},
              str(whole))
    np.testing.assert_allclose(embed("hf:" + folder, weights=str(whole)),
                               fitted.transform(TEXTS), atol=1e-6)
    model_only = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in fitted.backbone_.module.model.state_dict().items()},
              str(model_only))
    with pytest.raises(ValueError, match="holds the Hugging Face model alone"):
        PretrainedFeatureTransformer("hf:" + folder, weights=str(model_only)).fit(TEXTS)
