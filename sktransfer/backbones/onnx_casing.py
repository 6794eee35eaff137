"""Lower-casing and accent stripping in a text graph, exactly as the estimator does them.

The estimator may lower-case in Python (``str.lower``, a sentence-transformers
``do_lower_case``), and its Hugging Face tokenizer may strip accents and
lower-case again (a ``BertNormalizer``). No operator at hand does either like
them: onnxruntime-extensions' ``BertTokenizer`` maps a character to at most one
other and lower-cases few scripts (``ΑΘΗΝΑ``, ``İSTANBUL``, ``ŁÓDŹ`` come out as
[UNK]), its ``StringLower`` is no better, and ONNX's ``StringNormalizer`` uses the
serving machine's C++ locale (it fails where ``en_US`` is not installed, and
maps a character to one character only).

So the graph does it a character at a time, from tables computed at export
with the very functions the estimator calls:

1. split each text into its characters (RE2, which reads UTF-8);
2. replace each character by its table entry: ``str.lower`` of it, then the
   tokenizer's NFD decomposition of that where the tokenizer strips accents,
   else the tokenizer's lower-casing. ``str.lower`` maps one character by
   context: ``Σ`` becomes ``ς`` after a cased letter and not before one
   (skipping case-ignorable characters), the rule CPython applies;
3. where accents are stripped, the tokenizer's NFD also sorts each run of
   combining marks by canonical class, across characters: the graph sorts
   them so, then replaces each by the tokenizer's stripping and lower-casing
   of it.

Each table is every code point's value where it differs from the code point,
so the graph agrees with the estimator on any text (the tests compare all
cased code points of many scripts; a one-off comparison covered all of them).
"""

import functools
import unicodedata
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from .onnx_graph import GraphBuilder

#: The operator domain of onnxruntime-extensions, and the ONNX-ML domain (LabelEncoder
#: with string keys: version 2).
CONTRIB, ML = "ai.onnx.contrib", "ai.onnx.ml"

#: One UTF-8 character, newlines included: a capture group, as the extensions'
#: regex split keeps what the group matches as a token of its own.
_ONE_CHARACTER = "(?s)(.)"

#: Case classes for the final-sigma rule.
_CASED, _IGNORABLE, _CAPITAL_SIGMA = 1, 2, 3


@dataclass(frozen=True)
class Casing:
    """What the estimator does to a text's letters before its tokenizer splits it.

    Parameters
    ----------
    python_lower : bool
        ``str.lower`` first (a sentence-transformers ``do_lower_case``).
    strip_accents : bool
        The tokenizer's NFD decomposition less its nonspacing marks.
    lowercase : bool
        The tokenizer's lower-casing (after stripping accents, as BERT's
        normalizer orders them).
    """

    python_lower: bool = False
    strip_accents: bool = False
    lowercase: bool = False

    def __bool__(self):
        return self.python_lower or self.strip_accents or self.lowercase


def lowered_texts(g, texts, casing):
    """Apply ``casing`` to each text: the steps below where a text of the call is
    not ASCII, else the extensions' ``StringLower`` (all these steps do to ASCII).

    The steps run one text at a time (a Loop over the call's texts): a call of
    ASCII texts skips them.

    Parameters
    ----------
    g : GraphBuilder
        The graph the nodes are added to.
    texts : str
        The name of a string tensor ``(N,)`` in ``g``.
    casing : Casing
        What the estimator does to the texts' letters.

    Returns
    -------
    str
        The name of the cased texts ``(N,)``.
    """
    # Beyond ASCII: what is left of the texts once their ASCII is removed.
    rest = g.node("StringRegexReplace", [  # RE2: runs of ASCII at once
        texts, g.const(np.array(["[\\x00-\\x7f]+"], object)), g.const(np.array([""], object))],
        domain=CONTRIB)
    longest = g.node("ReduceMax", [g.node("Concat", [
        g.node("StringLength", [rest], domain=CONTRIB), g.const([0])], axis=0)], keepdims=0)
    fast = GraphBuilder(prefix="casing_ascii")
    fast_out = (fast.node("StringLower", [texts], domain=CONTRIB)
                if casing.python_lower or casing.lowercase else fast.node("Identity", [texts]))
    slow = GraphBuilder(prefix="casing_any")
    slow_out = _each_text(slow, texts, casing)
    g.domains[CONTRIB] = 1
    g.domains[ML] = 2  # LabelEncoder with string keys
    return g.node("If", [g.node("Greater", [longest, g.const(np.array(0))])],
                  then_branch=_branch(slow, slow_out, "any_text_casing"),
                  else_branch=_branch(fast, fast_out, "ascii_casing"))


def _branch(b, out, name):
    """``b``'s nodes as an If branch with one output, the string tensor ``out``."""
    return helper.make_graph(b.nodes, name, [], [
        helper.make_tensor_value_info(out, TensorProto.STRING, None)], b.initializers)


def _each_text(g, texts, casing):
    """The texts with ``casing`` applied, a Loop over them added to ``g``."""
    b = GraphBuilder(prefix="casing")
    i = b.node("Unsqueeze", ["i", b.const([0])])
    text = b.node("Slice", [texts, i, b.node("Add", [i, b.const([1])])])
    b.node("Identity", [_cased_text(b, text, casing)], output="casing_text")
    b.node("Identity", ["cond"], output="cond_out")
    inputs = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info("casing_text", TensorProto.STRING, [1])]
    body = helper.make_graph(b.nodes, "one_text_casing", inputs, outputs, b.initializers)
    rows = g.node("Squeeze", [g.node("Shape", [texts]), g.const([0])])
    rows_of_one = g.node("Loop", [rows, g.const(np.array(True))], body=body)
    return g.node("Squeeze", [rows_of_one, g.const([1])])


def _cased_text(b, text, casing):
    """One text ``(1,)`` -> the same with ``casing`` applied ``(1,)``."""
    chars = _characters(b, text)
    first, final_sigma = _first_table(casing)
    replaced = _replace(b, chars, first)
    if casing.python_lower:
        replaced = b.node("Where", [_final_sigmas(b, chars), b.const(np.array([final_sigma],
                                                                               object)),
                                    replaced])
    if casing.strip_accents:
        pieces = _canonical_order(b, _characters(b, _join(b, replaced)))
        replaced = _replace(b, pieces, _piece_table(casing.strip_accents, casing.lowercase))
    return _join(b, replaced)


def _characters(b, text):
    """``(1,)`` string -> its characters ``(L,)``."""
    pattern = b.const(np.array([_ONE_CHARACTER], object))
    chars, _, _, _ = b.node("StringRegexSplitWithOffsets", [text, pattern, pattern],
                            domain=CONTRIB, outputs=[b.name(n) for n in
                                                     ("chars", "begins", "ends", "rows")])
    return chars


def _join(b, chars):
    return b.node("StringJoin", [chars, b.const(np.array([""], object)), b.const([0])],
                  domain=CONTRIB)


def _lookup(b, strings, keys, values, default):
    """``values[keys.index(s)]`` for each of ``strings``, ``default`` where absent (int64)."""
    _check_keys(keys)
    return b.node("LabelEncoder", [strings], domain=ML, keys_strings=list(keys),
                  values_int64s=[int(v) for v in values], default_int64=int(default))


def _check_keys(keys):
    # A LabelEncoder attribute holds any string; the split never yields an empty one.
    assert all(len(k) == 1 for k in keys), "table keys are single characters"


def _replace(b, chars, table):
    """Each of ``chars`` replaced by ``table[char]`` (a string, maybe empty or several
    characters) where it has an entry, else kept."""
    keys = sorted(table)
    index = _lookup(b, chars, keys, range(len(keys)), -1)
    found = b.node("GreaterOrEqual", [index, b.const(np.array(0, np.int64))])
    values = b.const(np.array([table[k] for k in keys], object))
    looked_up = b.node("Gather", [values, b.node("Max", [index, b.const(np.array(0, np.int64))])])
    return b.node("Where", [found, looked_up, chars])


def _final_sigmas(b, chars):
    """True for each ``Σ`` of ``chars`` that ``str.lower`` makes ``ς``: the nearest
    character before it that is not case-ignorable is cased, and the nearest after
    it is not (or there is none)."""
    classes = _sigma_classes()
    keys = sorted(classes)
    kind = _lookup(b, chars, keys, [classes[k] for k in keys], 0)
    # The characters that count, in order (case-ignorable ones are skipped).
    counted = b.node("Squeeze", [b.node("NonZero", [b.node("Not", [b.node("Equal", [
        kind, b.const(np.array(_IGNORABLE, np.int64))])])]), b.const([0])])
    kind = b.node("Gather", [kind, counted])
    cased = b.node("Cast", [b.node("Or", [
        b.node("Equal", [kind, b.const(np.array(_CASED, np.int64))]),
        b.node("Equal", [kind, b.const(np.array(_CAPITAL_SIGMA, np.int64))])])],
        to=TensorProto.INT64)
    n = b.node("Shape", [counted])
    zero = b.const([0])
    # The case of each counted character's neighbours (0 beyond either end).
    before = b.node("Slice", [b.node("Concat", [zero, cased], axis=0), zero, n])
    after = b.node("Slice", [b.node("Concat", [cased, zero], axis=0), b.const([1]),
                             b.node("Add", [n, b.const([1])])])
    final = b.node("And", [
        b.node("Equal", [kind, b.const(np.array(_CAPITAL_SIGMA, np.int64))]),
        b.node("And", [b.node("Cast", [before], to=TensorProto.BOOL),
                       b.node("Not", [b.node("Cast", [after], to=TensorProto.BOOL)])])])
    # Back to every character's place.
    everywhere = b.node("ConstantOfShape", [b.node("Shape", [chars])], value=helper.make_tensor(
        "zero", TensorProto.INT64, [1], [0]))
    mask = b.node("ScatterElements", [everywhere, counted,
                                      b.node("Cast", [final], to=TensorProto.INT64)])
    return b.node("Cast", [mask], to=TensorProto.BOOL)


def _canonical_order(b, pieces):
    """``pieces`` (decomposed characters) with each run of combining marks sorted by
    canonical class, stably, as NFD sorts them (a class-0 character ends a run)."""
    ccc = _combining_classes()
    keys = sorted(ccc)
    classes = _lookup(b, pieces, keys, [ccc[k] for k in keys], 0)
    starts = b.node("Cast", [b.node("Equal", [classes, b.const(np.array(0, np.int64))])],
                    to=TensorProto.INT64)
    run = b.node("CumSum", [starts, b.const(np.array(0, np.int64))])
    n = b.node("Shape", [pieces])
    positions = b.node("Range", [b.const(np.array(0, np.int64)),
                                 b.node("Squeeze", [n, b.const([0])]),
                                 b.const(np.array(1, np.int64))])
    # Sort by (run, class, position): positions make the key unique, so the sort is stable.
    key = b.node("Add", [b.node("Mul", [b.node("Add", [
        b.node("Mul", [run, b.const(np.array(256, np.int64))]), classes]), n]), positions])
    _, order = b.node("TopK", [key, n], outputs=[b.name("keys"), b.name("order")], largest=0,
                      sorted=1)
    return b.node("Gather", [pieces, order])


# -- the tables, from the functions the estimator calls --------------------------------


@functools.lru_cache(maxsize=1)
def _all_characters():
    """Every code point but the surrogates (no text holds them) and NUL (the separator
    below; no casing changes it)."""
    return tuple(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF)


def _each(function, chars, chunk=1 << 15):
    """``function`` of each of ``chars`` alone, computed chunk by chunk: NUL, which
    no step changes and NFD does not reorder across, keeps them apart."""
    out = []
    for start in range(0, len(chars), chunk):
        part = chars[start:start + chunk]
        values = function("\0".join(part)).split("\0")
        assert len(values) == len(part)
        out += values
    return out


def _changed(function, chars):
    return {c: v for c, v in zip(chars, _each(function, chars)) if v != c}


def _bert(strip_accents=False, lowercase=False):
    """The tokenizer's normalizer, less the steps the tokenizer operator does itself."""
    from tokenizers.normalizers import BertNormalizer

    return BertNormalizer(clean_text=False, handle_chinese_chars=False,
                          strip_accents=strip_accents, lowercase=lowercase).normalize_str


def _nfd(text):
    # The decomposition BertNormalizer strips accents from (its nfd step).
    from tokenizers.normalizers import NFD

    return NFD().normalize_str(text)


@functools.lru_cache(maxsize=None)
def _first_table(casing):
    """``{character: replacement}`` of step 2, and the replacement of a final ``Σ``."""
    def steps(text):
        if casing.python_lower:
            text = text.lower()
        if casing.strip_accents:
            return _nfd(text)
        return _bert(lowercase=True)(text) if casing.lowercase else text

    return _changed(steps, _all_characters()), steps("ς")


@functools.lru_cache(maxsize=None)
def _piece_table(strip_accents, lowercase):
    """``{character: replacement}`` of step 3, for the characters NFD leaves as they are."""
    chars = _all_characters()
    decomposed = _changed(_nfd, chars)
    pieces = [c for c in chars if c not in decomposed]
    return _changed(_bert(strip_accents, lowercase), pieces)


@functools.lru_cache(maxsize=None)
def _combining_classes():
    """``{character: canonical combining class}`` of the marks the tokenizer's NFD
    reorders. The tokenizer's Unicode tables may be older than Python's: a mark it
    does not know keeps its place, so each mark Python knows is tried against
    U+0334 (class 1) and U+093C (class 7)."""
    marks = [c for c in _all_characters() if unicodedata.combining(c) and _nfd(c) == c]
    low, nukta = "\u0334", "\u093c"
    moves = [_nfd(c + low) != c + low or _nfd(nukta + c) != nukta + c for c in marks]
    return {c: unicodedata.combining(c) for c, moved in zip(marks, moves) if moved}


@functools.lru_cache(maxsize=None)
def _sigma_classes():
    """``{character: class}`` for the final-sigma rule of ``str.lower``: cased,
    case-ignorable (skipped), or ``Σ`` itself; other characters are neither.

    Read from ``str.lower`` itself: ``xΣ`` ends in ``ς`` when x is cased and not
    case-ignorable; ``AxΣ`` does when x is case-ignorable or cased."""
    chars = _all_characters()
    ends_final = [v.endswith("ς") for v in _each(str.lower, [c + "Σ" for c in chars])]
    skipped = [v.endswith("ς") for v in _each(str.lower, ["A" + c + "Σ" for c in chars])]
    classes = {}
    for c, cased, cased_or_ignorable in zip(chars, ends_final, skipped):
        if cased:
            classes[c] = _CASED
        elif cased_or_ignorable:
            classes[c] = _IGNORABLE
    classes["Σ"] = _CAPITAL_SIGMA
    return classes
