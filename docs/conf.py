"""Sphinx configuration for the sktransfer documentation."""

import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

import sktransfer  # noqa: E402

project = "sktransfer"
author = "the sktransfer developers"
copyright = "the sktransfer developers"
version = release = sktransfer.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_theme_options = {
    "description": "Transfer learning for scikit-learn",
    "fixed_sidebar": True,
}

# Methods are listed by autodoc's :members:, so numpydoc need not build its
# own autosummary tables of them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"


# Docstrings name fitted attributes such as ``n_features_out_`` in plain text
# (in the numpydoc type of a return value, for instance), where reST would read
# the trailing underscore as a link to a target named "n_features_out".
_FITTED_NAME = re.compile(r"(?<![`\w])([A-Za-z]\w*[A-Za-z0-9])_(?=[\s),.:;\]]|$)")


def _escape_fitted_names(app, what, name, obj, options, lines):
    lines[:] = [_FITTED_NAME.sub(r"\1\\_", line) if "`" not in line else line
                for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _escape_fitted_names)
