"""The Sphinx documentation builds cleanly: any Sphinx warning (a broken
reference, bad reST in a docstring, a module autodoc cannot import) fails
the build, and so this test."""

import subprocess
import sys
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent.parent / 'docs'


def test_sphinx_docs_build_without_warnings_and_explain_the_thread_model(
        tmp_path):
    html_dir = tmp_path / 'html'
    command = [
        sys.executable, '-m', 'sphinx',
        '-W', '--keep-going', '-b', 'html',
        '-d', str(tmp_path / 'doctrees'),
        str(DOCS_DIR), str(html_dir),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=50)

    assert result.returncode == 0, (
        'sphinx-build failed (exit {}):\n{}\n{}'.format(
            result.returncode, result.stdout, result.stderr))

    concepts = (html_dir / 'concepts.html').read_text(encoding='utf-8')
    assert '<section id="the-thread-model">' in concepts
    assert '<section id="how-this-differs-from-nameko-s-greenthreads">' in (
        concepts)
