"""Gathered (compiled, fixed-capacity) pruning equals the masked dense computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lmdvit_jax.models import LMDViT, adawpt, fan_in_predictors, init_params, pruning
from lmdvit_jax.models import windows as win
from lmdvit_jax.models.adawpt import AdaWPTStage

B, SIDE, DIM, WS = 3, 16, 16, 4  # 16 windows of 4x4 per image
NUM_WINDOWS = (SIDE // WS) ** 2


def make_stage(capacity, chunks=pruning.DEFAULT_CHUNKS):
  return AdaWPTStage(
    DIM,
    depth=4,
    num_heads=2,
    win_size=WS,
    modulator=True,
    prune=True,
    capacity=capacity,
    chunks=chunks,
  )


_JITTED = {}


def run(stage, params, x):
  if stage not in _JITTED:  # stages are hashable: share compilations across tests
    _JITTED[stage] = jax.jit(lambda p, x: stage.apply({'params': p}, x, train=False))
  return _JITTED[stage](params, x)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  # Images of different contrast: their predictors keep different numbers of windows.
  x = rng.normal(size=(B, SIDE, SIDE, DIM)) * np.array([0.5, 1.0, 2.0])[:, None, None, None]
  x = jnp.asarray(x, jnp.float32)
  params = make_stage('masked').init(jax.random.PRNGKey(0), x, train=False)['params']
  # Centre the keep logits so that each predictor keeps about half of the windows.
  params = jax.tree_util.tree_map(np.array, params)
  for i in range(2):
    _, scores, _, _ = run(make_stage('masked'), params, x)
    window_logits = win.window_mean(win.roll(scores[i], -(WS // 2) * i), WS)
    diff = np.median(np.asarray(window_logits[..., 0] - window_logits[..., 1]))
    params[f'predictor_{i}']['out_linear3']['bias'][0] -= diff
  return x, params


def with_constant_decisions(params, keep: bool):
  """Predictors that keep every window (or none), whatever the input."""
  params = jax.tree_util.tree_map(np.array, params)
  for i in range(2):
    last = params[f'predictor_{i}']['out_linear3']
    last['kernel'][:] = 0
    last['bias'][:] = [50.0, -50.0] if keep else [-50.0, 50.0]
  return params


def test_setup_has_different_kept_counts_per_image(setup):
  x, params = setup
  _, _, decisions, _ = run(make_stage('masked'), params, x)
  for d in decisions:
    counts = np.asarray(d).reshape(B, -1).sum(-1)
    assert 0 < counts.min() and counts.max() < NUM_WINDOWS
    assert len(set(counts.tolist())) > 1, counts


# Exact mode in chunks of 1, 3 (the last chunk padded past the 16 windows) and
# 16 windows (one chunk), and fixed budgets.
@pytest.mark.parametrize(
  'capacity,chunks', [('exact', 16), ('exact', 6), ('exact', 1), (1.0, 16), (0.875, 16)]
)
def test_gathered_equals_masked(setup, capacity, chunks):
  x, params = setup
  ref, _, ref_decisions, _ = run(make_stage('masked'), params, x)
  out, _, decisions, dropped = run(make_stage(capacity, chunks), params, x)
  max_kept = max(float(np.asarray(d).reshape(B, -1).sum(-1).max()) for d in decisions)
  assert max_kept <= 0.875 * NUM_WINDOWS  # nothing is dropped at these capacities
  assert all(int(np.asarray(d).sum()) == 0 for d in dropped)
  for a, b in zip(decisions, ref_decisions):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize('keep', [True, False])
def test_all_or_no_windows_kept(setup, keep):
  x, params = setup
  params = with_constant_decisions(params, keep)
  ref, _, _, _ = run(make_stage('masked'), params, x)
  out, _, decisions, _ = run(make_stage('exact'), params, x)
  assert all(np.all(np.asarray(d) == float(keep)) for d in decisions)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
  if not keep:  # pruned windows leave the stage bit-identical
    np.testing.assert_array_equal(out, x)
  else:
    assert np.abs(np.asarray(out - x)).max() > 1e-3


def test_fixed_budget_drops_and_reports_overflow(setup):
  x, params = setup
  out, _, decisions, dropped = run(make_stage(0.25), params, x)
  ref, _, _, _ = run(make_stage('masked'), params, x)
  capacity = pruning.fixed_capacity(NUM_WINDOWS, 0.25)
  for d, dr in zip(decisions, dropped):
    kept = np.asarray(d).reshape(B, -1).sum(-1).astype(int)
    np.testing.assert_array_equal(np.asarray(dr), np.maximum(kept - capacity, 0))
  assert sum(int(np.asarray(d).sum()) for d in dropped) > 0
  assert np.abs(np.asarray(out - ref)).max() > 1e-4  # dropping changes the result


def test_plan_ranks_kept_windows_by_confidence():
  policy = jnp.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], jnp.float32)
  confidence = jnp.array([[0.6, 0.4, 0.9, 0.7, 0.3, 0.55], [0.1, 0.2, 0.3, 0.4, 0.45, 0.0]])
  plan = pruning.plan_windows(policy, confidence)
  np.testing.assert_array_equal(plan.order[0, :4], [2, 3, 0, 5])
  np.testing.assert_array_equal(plan.count, [4, 0])
  budget = pruning.plan_windows(policy, confidence, capacity=3)
  np.testing.assert_array_equal(budget.count, [3, 0])
  np.testing.assert_array_equal(budget.dropped, [1, 0])  # window 5, the least confident


def test_chunk_size_bounds_the_waste():
  assert pruning.chunk_size(4096, 16) == 256
  assert pruning.chunk_size(17, 8) == 3  # 6 chunks of 3 cover 17 windows
  assert pruning.chunk_size(4, 16) == 1
  with pytest.raises(ValueError, match='capacity_chunks'):
    pruning.chunk_size(16, 0)


def test_gather_scatter_round_trip():
  w = jnp.arange(2 * 5 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 5, 2, 2, 1)
  idx = jnp.array([[3, 1, 5], [4, 3, 6]], jnp.int32)  # 5 and 6: padding past nW
  sel = pruning.gather_windows(w, idx)
  np.testing.assert_array_equal(sel[1, 0], w[1, 4])
  back = pruning.scatter_windows(jnp.zeros_like(w), idx, sel)
  np.testing.assert_array_equal(back[0, 3], w[0, 3])
  np.testing.assert_array_equal(back[1, 3], w[1, 3])
  np.testing.assert_array_equal(back[0, 0], 0)  # not in idx
  np.testing.assert_array_equal(back[0, 4], 0)  # padding writes are dropped


class _MarkingBlock(adawpt.TransformerBlock):
  """Adds 1 to every window it computes, kept or not: marks the work done."""

  @nn.compact
  def __call__(self, windows, keep, region_ids, train):
    return windows + 1.0


@pytest.mark.parametrize('chunks', [16, 5, 1])
def test_exact_mode_computes_at_most_one_chunk_beyond_the_kept_count(setup, monkeypatch, chunks):
  x, params = setup
  monkeypatch.setitem(adawpt.BLOCKS, 'lewin', _MarkingBlock)
  stage = AdaWPTStage(
    DIM, depth=1, num_heads=2, win_size=WS, prune=True, capacity='exact', chunks=chunks
  )
  out, _, decisions, _ = stage.apply(
    {'params': {'predictor_0': params['predictor_0']}}, x, train=False
  )
  kept = np.asarray(decisions[0]).reshape(B, -1).sum(-1).astype(int)
  marked = np.isclose(np.asarray(win.partition(out - x, WS)), 1.0, atol=1e-5)
  computed = marked.all(axis=(2, 3, 4)).sum(-1)
  chunk = pruning.chunk_size(NUM_WINDOWS, chunks)
  expected = min(NUM_WINDOWS, -(-kept.max() // chunk) * chunk)  # whole chunks, one program
  np.testing.assert_array_equal(computed, expected)
  assert expected - kept.max() < chunk <= -(-NUM_WINDOWS // chunks)


def test_compiled_program_has_static_shapes_and_no_host_calls(setup):
  x, params = setup
  lowered = jax.jit(lambda p, x: make_stage('exact').apply({'params': p}, x, train=False)).lower(
    params, x
  )
  text = lowered.as_text()
  assert 'callback' not in text
  assert 'stablehlo.while' in text  # the run-time loop over chunks of kept windows
  # Compiled FLOPs follow a fixed budget.
  flops = {}
  for budget in (1.0, 0.25):
    compiled = (
      jax.jit(lambda p, x, s=make_stage(budget): s.apply({'params': p}, x, train=False))  # noqa: B008
      .lower(params, x)
      .compile()
    )
    flops[budget] = compiled.cost_analysis()['flops']
  assert flops[0.25] < 0.5 * flops[1.0]


def test_a_new_decision_rule_is_one_registry_entry_and_a_config_value(monkeypatch):
  """Plugging in a second inference rule: register it, name it in the model."""

  # Keep the most confident half of each image's windows, whatever the threshold.
  def top_half(p, threshold):
    del threshold
    flat = p.reshape(p.shape[0], -1)
    cut = jnp.sort(flat, axis=-1)[:, flat.shape[1] // 2][:, None]
    return (flat >= cut).reshape(p.shape).astype(p.dtype)

  monkeypatch.setitem(pruning.DECISION_RULES, 'top_half', top_half)
  kwargs = dict(tiny.get_config().model, capacity='masked', prune_loc=(1,) + (0,) * 8)
  # Fan-in predictors: varied keep probabilities (the 0.02 init gives ties at 0.5).
  params = fan_in_predictors(init_params(LMDViT(**kwargs), 0))
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 128, 128, 3)), jnp.float32)
  out = LMDViT(**kwargs, decision_rule='top_half').apply({'params': params}, x)
  kept = np.asarray(out.decisions[0]).reshape(2, -1).mean(axis=1)
  np.testing.assert_allclose(kept, 0.5, atol=0.02)
  with pytest.raises(ValueError, match="decision_rule must be one of"):
    LMDViT(**kwargs, decision_rule='nonesuch').apply({'params': params}, x)


def test_pruning_owns_which_blocks_predict_and_their_shifts():
  assert [pruning.predicts(b) for b in range(4)] == [True, True, False, False]
  assert [pruning.block_shift(b, 8) for b in range(4)] == [0, 4, 0, 4]
  blocks = pruning.decision_blocks(('a', 'b', 'c'), (3, 1, 2), (1, 0, 1))
  assert [(b.label, b.shifted) for b in blocks] == [
    ('a.0', False),
    ('a.1', True),
    ('c.0', False),
    ('c.1', True),
  ]
