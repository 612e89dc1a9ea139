"""Sphinx configuration for the threadko documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html``; the test
suite does the same (``tests/test_docs.py``) and fails on any warning.
"""

import inspect
import os
import sys

# document the checkout these docs live in, even if another copy is installed
ROOT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT_DIR)

import threadko  # noqa: E402

project = 'threadko'
author = 'threadko contributors'
copyright = 'threadko contributors'
release = threadko.__version__
version = '.'.join(release.split('.')[:2])

extensions = [
    'myst_parser',  # the Markdown pages: benchmarks.md, reliability.md
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}

# the docs must build offline, so no intersphinx; references to the standard
# library are written as plain literals
autodoc_member_order = 'bysource'
autodoc_default_options = {
    'members': True,
    'show-inheritance': True,
}
autoclass_content = 'class'

exclude_patterns = ['_build']
root_doc = 'index'
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_theme_options = {
    'description': "Nameko's programming model on OS threads",
    'fixed_sidebar': True,
}
html_title = 'threadko {}'.format(release)


def _show_init_signature(app, what, name, obj, options, signature,
                         return_annotation):
    """Show the ``__init__`` signature of extension classes.

    ``Extension.__new__`` takes ``(*args, **kwargs)`` (it records the
    arguments so that ``bind`` can rebuild the extension), which would hide
    the arguments users actually pass.
    """
    from threadko.extensions import Extension

    if what != 'class' or not isinstance(obj, type):
        return None
    if not issubclass(obj, Extension) or obj.__init__ is object.__init__:
        return None
    init_signature = inspect.signature(obj.__init__)
    parameters = list(init_signature.parameters.values())[1:]  # drop self
    signature = str(init_signature.replace(parameters=parameters))
    return signature, return_annotation


def setup(app):
    app.connect('autodoc-process-signature', _show_init_signature)
