import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sktransfer import PretrainedFeatureTransformer, load_backbone

SENTENCES = [
    "A man is playing a guitar on stage.",
    "The new movie is awesome",
    "short",
    "Transfer learning reuses what a network learned on one task for another task, "
    "which matters most when the new task has few labelled examples.",
]


def _normalized(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_minilm_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    ours = PretrainedFeatureTransformer(f"hf:{minilm_path}", batch_size=2).fit(SENTENCES)
    theirs = SentenceTransformer(minilm_path, device="cpu").encode(SENTENCES)
    embedded = ours.transform(SENTENCES)
    cosine = (_normalized(embedded) * _normalized(theirs)).sum(1)
    assert cosine.min() > 0.99999
    # The model's pipeline ends in Normalize: unit-length embeddings, as its users get.
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), np.linalg.norm(theirs, axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)
    assert ours.n_features_out_ == 384
    # the sequence length comes from the model's own sentence_bert_config.json
    assert ours.backbone_.preprocess.max_length == 256


def test_output_order_follows_input_despite_length_sorting(minilm_path):
    pft = PretrainedFeatureTransformer(f"hf:{minilm_path}", batch_size=1).fit(SENTENCES)
    together = pft.transform(SENTENCES)
    one_by_one = np.vstack([pft.transform([s]) for s in SENTENCES])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-5)


def test_cls_pooling_differs_from_mean(minilm_path):
    mean = PretrainedFeatureTransformer(f"hf:{minilm_path}").fit(SENTENCES)
    cls = PretrainedFeatureTransformer(f"hf:{minilm_path}", pooling="cls").fit(SENTENCES)
    assert not np.allclose(mean.transform(SENTENCES), cls.transform(SENTENCES))


def test_random_init_and_local_file(minilm_path, tmp_path):
    pretrained = load_backbone(f"hf:{minilm_path}")
    path = tmp_path / "minilm.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.module.model.state_dict().items()},
              str(path))
    from_file = load_backbone(f"hf:{minilm_path}", weights=str(path))
    random = load_backbone(f"hf:{minilm_path}", weights=None)
    name = "embeddings.word_embeddings.weight"
    ref = pretrained.module.model.state_dict()[name]
    assert torch.equal(from_file.module.model.state_dict()[name], ref)
    assert not torch.equal(random.module.model.state_dict()[name], ref)


def test_layer_fusion_on_text(minilm_path):
    pft = PretrainedFeatureTransformer(
        f"hf:{minilm_path}", layers=["model.encoder.layer.2", "model.encoder.layer.5"]
    ).fit(SENTENCES)
    assert pft.transform(SENTENCES).shape == (4, 768)


def test_unreachable_hub_model_is_named():
    with pytest.raises(OSError, match="hf:nobody/no-such-model.*Hugging Face cache"):
        load_backbone("hf:nobody/no-such-model")


def test_text_backbone_rejects_images(minilm_path, digits):
    pft = PretrainedFeatureTransformer(f"hf:{minilm_path}")
    with pytest.raises(ValueError, match="list of strings"):
        pft.fit(digits[0][:2])


def test_a_roberta_family_model_embeds_a_text_as_long_as_its_positions_hold(tmp_path):
    # RoBERTa numbers positions from pad_token_id + 1: of 20 position embeddings,
    # 18 hold tokens. A tokenizer without its own limit must not be allowed 20.
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran far"] * 5, vocab_size=280,
                            min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    RobertaTokenizerFast.from_pretrained(str(tmp_path)).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=280, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=20, pad_token_id=1)).save_pretrained(
        str(tmp_path))
    pft = PretrainedFeatureTransformer("hf:" + str(tmp_path)).fit(["the cat"])
    out = pft.transform(["the cat sat on the mat " * 10, "a dog"])
    assert out.shape == (2, 16) and np.isfinite(out).all()
