"""The docs' code runs as written: every Python block of docs/extending.md, in
order, in one namespace (as a reader would paste them)."""

import re

from tests.helpers import REPO


def python_blocks(page: str) -> list[str]:
  return re.findall(r'```python\n(.*?)```', (REPO / 'docs' / page).read_text(), re.S)


def test_extending_page_runs_as_written():
  from lmdvit_jax import losses
  from lmdvit_jax.models import adawpt, pruning

  blocks = python_blocks('extending.md')
  assert len(blocks) == 3
  namespace = {'__name__': 'docs_extending'}
  try:
    for code in blocks:
      exec(compile(code, 'docs/extending.md', 'exec'), namespace)
  finally:  # leave the registries as the other tests expect them
    pruning.DECISION_RULES.pop('dilated', None)
    losses.EXTRA_TERMS.pop('edges', None)
    adawpt.BLOCKS.pop('gated', None)
