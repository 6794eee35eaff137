"""A text backbone's tokenization as an ONNX graph (onnxruntime-extensions' tokenizer ops).

The graph is built from the model's own tokenizer (its ``tokenizer.json``, as
the fitted :class:`~sktransfer.backbones.hf_text.Tokenize` holds it): the
vocabulary and normalization settings become the attributes of the
extensions' operator, so the served graph tokenizes as the estimator does.
Which tokenizers the operators express is decided from the tokenizer's own
description (its model type, normalizer and post-processor); any other is
refused by name.

WordPiece (BERT family): the extensions' ``BertTokenizer`` operator takes one
text (two make a pair), so a ``Loop`` tokenizes the batch a text at a time,
pads each row to ``max_length`` and the batch is cut to its longest row, as
the estimator pads to the longest. Byte-level BPE (GPT-2, RoBERTa):
``GPT2Tokenizer`` takes the batch and pads it; the special tokens a RoBERTa
post-processor adds are added around it.
"""

import json

import numpy as np
from onnx import TensorProto, helper

from .onnx_casing import Casing, lowered_texts
from .onnx_graph import GraphBuilder, ServingInput, UnsupportedPreprocessing

#: The operator domain of onnxruntime-extensions.
CONTRIB = "ai.onnx.contrib"


def text_graph(prep, example):
    """The tokenization graph of ``prep`` (a fitted ``Tokenize``): strings ``(N,)`` ->
    the network's int64 inputs, named as in ``example``."""
    if getattr(prep, "prompt", ""):
        raise UnsupportedPreprocessing(
            f"a prompt ({prep.prompt!r}) is prepended in Python; export_onnx does not put "
            f"it in the graph in this version: fit with prompt=\"\"")
    description = json.loads(prep.tokenizer.backend_tokenizer.to_str()) \
        if hasattr(prep.tokenizer, "backend_tokenizer") else {}
    kind = (description.get("model") or {}).get("type")
    keys = list(example)
    if kind == "WordPiece" and _is_bert(description):
        return _wordpiece(prep, description, keys)
    if kind == "BPE" and _is_byte_level(description):
        return _byte_level_bpe(prep, description, keys)
    raise UnsupportedPreprocessing(
        f"the tokenizer {type(prep.tokenizer).__name__} ({kind or 'unknown'} model) of "
        f"{prep.tokenizer.name_or_path!r} has no onnxruntime-extensions operator here: "
        f"WordPiece (BERT) and byte-level BPE (GPT-2, RoBERTa) tokenizers are exported")


def _is_bert(description):
    normalizer = description.get("normalizer") or {}
    pre = description.get("pre_tokenizer") or {}
    return normalizer.get("type") == "BertNormalizer" and pre.get("type") == "BertPreTokenizer"


def _is_byte_level(description):
    pre = description.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and not description.get("normalizer")


def _serving():
    return ServingInput(object, (None,), "string (N,)")


def _wordpiece(prep, description, keys):
    tok = prep.tokenizer
    normalizer = description["normalizer"]
    lowercase = bool(normalizer.get("lowercase"))
    strip = normalizer.get("strip_accents")
    # The operator numbers tokens by line. A vocabulary file may list a token
    # twice (the tokenizer keeps the later id): the ids no token maps to get
    # placeholders that no text produces, so every line keeps its id.
    by_id = {i: t for t, i in tok.get_vocab().items()}
    vocab = "\n".join(by_id.get(i, f"[sktransfer-unused-{i}]") for i in range(max(by_id) + 1))
    # The estimator's Tokenize lower-cases first for a pipeline that asks it; BERT's
    # normalizer strips accents when it lower-cases, unless told otherwise. The
    # operator's own lower-casing and stripping differ from both (one character to
    # one, few scripts): the graph does them before it (onnx_casing).
    casing = Casing(python_lower=prep.lowercase, lowercase=lowercase,
                    strip_accents=lowercase if strip is None else bool(strip))
    attrs = {
        "vocab_file": vocab,
        "do_lower_case": 0,
        "strip_accents": 0,
        "tokenize_chinese_chars": int(bool(normalizer.get("handle_chinese_chars", True))),
        "max_length": int(prep.max_length),
    }
    for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        if getattr(tok, name, None):
            attrs[name] = str(getattr(tok, name))
    g = GraphBuilder()
    texts = lowered_texts(g, "X", casing) if casing else "X"
    rows = g.node("Squeeze", [g.node("Shape", ["X"]), g.const([0])])
    true = g.const(np.array(True))
    body = _one_text_body(texts, attrs, prep.max_length, int(tok.pad_token_id or 0))
    ids, types, mask = g.node("Loop", [rows, true], outputs=[
        g.name("ids"), g.name("types"), g.name("mask")], body=body)
    g.domains[CONTRIB] = 1
    # Padded to max_length in the loop; cut to the batch's longest text, as the
    # estimator pads to the longest.
    longest = g.node("ReduceMax", [g.node("ReduceSum", [mask, g.const([1])], keepdims=0)],
                     keepdims=1)
    named = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    unknown = [k for k in keys if k not in named]
    if unknown:
        raise UnsupportedPreprocessing(f"the network takes {unknown}, which the tokenizer "
                                       f"graph does not give")
    for key in keys:
        g.node("Slice", [named[key], g.const([0]), longest, g.const([1])], output=key)
    model = g.model(helper.make_tensor_value_info("X", TensorProto.STRING, ["N"]), keys,
                    {k: TensorProto.INT64 for k in keys})
    return model, _serving()


def _one_text_body(texts, attrs, max_length, pad_id):
    """The Loop body: text ``i`` of the outer ``texts`` -> three int64 rows of ``max_length``."""
    b = GraphBuilder(prefix="text")
    i = b.node("Unsqueeze", ["i", b.const([0])])
    text = b.node("Slice", [texts, i, b.node("Add", [i, b.const([1])])])
    ids, types, mask = b.node("BertTokenizer", [text], domain=CONTRIB, outputs=[
        b.name("ids"), b.name("types"), b.name("mask")], **attrs)
    spare = b.node("Sub", [b.const([max_length]), b.node("Shape", [ids])])
    pads = b.node("Concat", [b.const([0]), spare], axis=0)
    outs = []
    for row, value in ((ids, pad_id), (types, 0), (mask, 0)):
        outs.append(b.node("Pad", [row, pads, b.const(np.array(value, np.int64))]))
    b.node("Identity", ["cond"], output="cond_out")
    inputs = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])] + [
        helper.make_tensor_value_info(o, TensorProto.INT64, [max_length]) for o in outs]
    return helper.make_graph(b.nodes, "one_text", inputs, outputs, b.initializers)


def _byte_level_bpe(prep, description, keys):
    tok = prep.tokenizer
    model = description["model"]
    vocab = json.dumps(model["vocab"], separators=(",", ":"))
    merges = "\n".join(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    post = description.get("post_processor") or {}
    specials = _roberta_specials(post, tok)
    # Room for the special tokens within max_length, as the tokenizer's truncation keeps.
    room = int(prep.max_length) - (2 if specials else 0)
    g = GraphBuilder()
    g.domains[CONTRIB] = 1
    # A pipeline's do_lower_case: str.lower, which the operator does not do.
    casing = Casing(python_lower=prep.lowercase)
    texts = lowered_texts(g, "X", casing) if casing else "X"
    ids, mask = g.node("GPT2Tokenizer", [texts], domain=CONTRIB, outputs=[
        g.name("ids"), g.name("mask")], vocab=vocab, merges=merges, padding_length=-1)
    ids = g.node("Slice", [ids, g.const([0]), g.const([room]), g.const([1])])
    mask = g.node("Slice", [mask, g.const([0]), g.const([room]), g.const([1])])
    if specials:
        ids, mask = _add_specials(g, ids, mask, specials, int(tok.pad_token_id or 0))
    if model.get("dropout"):
        raise UnsupportedPreprocessing("a BPE tokenizer with dropout is random: not exported")
    named = {"input_ids": ids, "attention_mask": mask}
    unknown = [k for k in keys if k not in named]
    if unknown:
        raise UnsupportedPreprocessing(f"the network takes {unknown}, which the byte-level "
                                       f"BPE graph does not give")
    for key in keys:
        g.node("Identity", [named[key]], output=key)
    graph = g.model(helper.make_tensor_value_info("X", TensorProto.STRING, ["N"]), keys,
                    {k: TensorProto.INT64 for k in keys})
    return graph, _serving()


def _roberta_specials(post, tok):
    """``(bos id, eos id)`` when the post-processor wraps each text in them, else None."""
    if post.get("type") == "RobertaProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if not post:
        return None
    raise UnsupportedPreprocessing(
        f"the post-processor {post.get('type')!r} of {tok.name_or_path!r} has no graph here "
        f"(none, or RoBERTa's, is exported)")


def _add_specials(g, ids, mask, specials, pad_id):
    """``<s> ids </s>`` per row, the end token right after each row's last real token."""
    bos, eos = specials
    ids = g.node("Cast", [ids], to=TensorProto.INT64)
    mask = g.node("Cast", [mask], to=TensorProto.INT64)
    rows = g.node("Slice", [g.node("Shape", [ids]), g.const([0]), g.const([1])])
    column = g.node("Concat", [rows, g.const([1])], axis=0)
    ones = g.node("ConstantOfShape", [column], value=helper.make_tensor(
        "one", TensorProto.INT64, [1], [1]))
    zeros = g.node("Mul", [ones, g.const([0])])
    # Real tokens shifted one right, behind <s>; one more column for </s>.
    ids = g.node("Concat", [g.node("Mul", [ones, g.const([bos])]), ids, zeros], axis=1)
    mask = g.node("Concat", [ones, mask, zeros], axis=1)
    lengths = g.node("ReduceSum", [mask, g.const([1])], keepdims=1)  # <s> + tokens
    width = g.node("Shape", [ids])
    positions = g.node("Range", [g.const(np.array(0, np.int64)), g.node(
        "Squeeze", [g.node("Slice", [width, g.const([1]), g.const([2])]), g.const([0])]),
        g.const(np.array(1, np.int64))])
    at_end = g.node("Equal", [g.node("Unsqueeze", [positions, g.const([0])]), lengths])
    ids = g.node("Where", [at_end, g.const(np.array(eos, np.int64)), ids])
    mask = g.node("Where", [at_end, g.const(np.array(1, np.int64)), mask])
    # Padding after the end token: the pad id, as the tokenizer pads.
    ids = g.node("Where", [g.node("Cast", [mask], to=TensorProto.BOOL), ids,
                           g.const(np.array(pad_id, np.int64))])
    return ids, mask

