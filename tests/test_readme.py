"""The README's Python example runs as written."""
import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = open(README).read()
    blocks = re.findall(r'```python\n(.*?)```', text, re.S)
    assert blocks, 'README has a python example'
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, 'README.md', 'exec'), {})
