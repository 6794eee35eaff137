"""No benchmark figures in API docstrings: they live in benchmarks/RESULTS.md and the docs.

A measured figure (a timing, a speed-up, an accuracy from a run) goes stale
with the next release of torch or the next machine, and a docstring is not
where anyone re-measures. The docstrings say what the code does and may
point to ``benchmarks/RESULTS.md``; this test scans every docstring of the
package (module, class and function docstrings, ``__doc__`` and ``*_DOC``
strings, and the ``#:`` comments Sphinx renders as attribute docs).
"""

import ast
import io
import os
import re
import tokenize

import sktransfer

PACKAGE = os.path.dirname(sktransfer.__file__)

#: What a measured figure looks like; each branch names the kind it catches.
MEASUREMENT = re.compile(r"""
      \d+(?:\.\d+)?\s?(?:ms|µs|us|ns)\b                             # a latency: 6.2 ms
    | \d+(?:\.\d+)?\s?s\s?(?:/\s?|per\s)(?:epoch|call|image|batch|step|sample|sentence|clip)
                                                                      # 1.9 s/epoch
    | \d[\d,]*(?:\.\d+)?\s?(?:images|sentences|samples|clips|items|tokens)\s?/\s?s\b
                                                                      # throughput: 249 images/s
    | (?<![\w.])\d+(?:\.\d+)?x(?!\w)                                # a ratio: 0.96x, 7x less
    | \d+(?:\.\d+)?\s?%\s(?:faster|slower|quicker)\b                # 12% faster
    | \b(?:faster|slower|speed-?up)\b[^.;]{0,25}?\d+(?:\.\d+)?\s?%  # faster by 12-20%
    | \bwithin\s\d+(?:\.\d+)?\s?%                                   # the two were within 3%
    | \b\d\.\d{2,}\b[^.;]{0,40}?\bagainst\b[^.;]{0,40}?\d\.\d{2,}\b # 0.698 against 0.650
    | \b(?:accuracy|r2|score|similarity)\s(?:of\s)?\d?\.\d{2,}      # accuracy 0.698
    | \b\d+\s(?:won|lost|tied)\b                                    # 7 won, 1 tied
    | \b\d[^.;]{0,40}?\bdid\s(?:as\swell\sas|better\sthan|worse\sthan)\b
                                                                      # 3 epochs did as well as
""", re.X | re.I)

def figures(text):
    """The measured figures in ``text`` (whitespace runs read as one space)."""
    return [m.group(0) for m in MEASUREMENT.finditer(" ".join(text.split()))]


def _string(node):
    """The text of a str constant or f-string (its fixed parts), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "{}".join(v.value for v in node.values
                         if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def docstrings(path):
    """Every docstring-like text of the module at ``path``."""
    source = open(path, encoding="utf-8").read()
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and _string(body[0].value) is not None:
                found.append(_string(body[0].value))
        if isinstance(node, ast.Assign) and _string(node.value) is not None:
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any(n == "__doc__" or n.endswith("_DOC") for n in names):
                found.append(_string(node.value))
    # Consecutive "#:" comments are one attribute doc.
    block = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.string.startswith("#:"):
            block.append(token.string[2:])
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT) and block:
            found.append(" ".join(block))
            block = []
    return found


def package_modules():
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))
                yield rel[:-3].replace(os.sep, ".").removesuffix(".__init__"), \
                    os.path.join(root, name)


def test_the_pattern_catches_measured_figures():
    # The figures this check was written to remove, as they were worded.
    measured = [
        "accuracy 0.698 against 0.650 for frozen embeddings",
        "over 8 draws (7 won, 1 tied)",
        "3 epochs of 8 pairs did as well as 10 epochs of 2",
        "8 labels per class: 0.681 at 1e-4 against 0.584 at 1e-3",
        "a fraction of the cost of an SVD of F (7x less for 20,000 x 512 here)",
        "several points of cosine similarity (0.92 against 0.98 on all-MiniLM-L6-v2)",
        "at 64 px contiguous NCHW took 0.96x the channels-last time",
        "at 96 px the two were within 3%",
        "channels-last was faster, by 12-20% at 160 to 224 px",
        "2-5x faster and ~1000x closer to the ideal tone",
        "one sentence in 6.24 ms", "1.92 s/epoch", "249 images/s", "5,310 sentences/s",
        "about 15% faster than the loop", "a 1.3x speed-up",
    ]
    for text in measured:
        assert figures(text), text


def test_the_pattern_leaves_ordinary_values_alone():
    ordinary = [
        "lr : float, default=3e-3", "``lr=2e-4``, ``max_epochs=3``, ``n_pairs=8``",
        "removed in 0.3.0", "scikit-learn 1.9.1", "weight_decay=0.01", "alpha=0.5",
        "images 96x128 resized to 73", "two hidden layers (Ganin et al. use 1024 x 1024)",
        "the first 25% of steps", "random resized crop (area 60-100%)",
        "its 95% paired t-interval", "30 s log-mel windows", "Whisper 30 s, AST about 10 s",
        "a hex tag 0x1F", "20,000 x 512 features", "validation_size=0.33", "(N, H, W, C)",
        ">>> round(score, 2)\n    0.98",
    ]
    for text in ordinary:
        assert figures(text) == [], text


def _found_by_module():
    found = {}
    for module, path in package_modules():
        hits = [f for doc in docstrings(path) for f in figures(doc)]
        if hits:
            found[module] = hits
    return found


def test_no_docstring_holds_a_measured_figure():
    offending = {module: hits for module, hits in _found_by_module().items() if hits}
    assert offending == {}, (
        "measured figures in docstrings; move them to benchmarks/RESULTS.md (or the docs "
        f"page that shows measurements) and point there: {offending}")
