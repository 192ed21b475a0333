"""Training library: train state, optimizer, schedule, sharding and the steps.

Everything here is functional. The train state is a plain pytree (a NamedTuple
of arrays), the train step is a pure function `(state, batch) -> (state,
metrics)` that `make_train_step` jit-compiles with the state replicated and
donated and the batch sharded over the mesh axis `data`:

    mesh = train_lib.make_mesh()
    model = train_lib.build_model(config)
    tx = train_lib.make_optimizer(config)
    state = train_lib.init_train_state(model, tx, config, mesh)
    step = train_lib.make_train_step(model, tx, config, mesh)
    state, metrics = step(state, batch)      # `state` is donated

Randomness: the key of step `s` is `fold_in(state.rng, s)`, so a run resumed
from a checkpoint draws exactly the keys the uninterrupted run would have.

Non-finite guard: when the loss or the global gradient norm is not finite, the
step keeps the old params and optimizer state (selected with `jnp.where`, so
nothing non-finite is ever written), still advances `step`, and increments
`skipped`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from lmdvit_jax import losses
from lmdvit_jax.mesh import DATA_AXIS, make_mesh  # noqa: F401  (make_mesh: DESIGN's contract)
from lmdvit_jax.models import LMDViT, fan_in_predictors, identity_output, init_params, pruning
from lmdvit_jax.models.lmdvit import COMPUTE_DTYPES, matmul_precision

REMAT_POLICIES = {
  'none': None,
  # Recompute each Transformer block in the backward pass (the model's
  # `remat`): stores only block inputs, the lowest peak memory.
  'blocks': None,
  # Save only matrix-multiply outputs; recompute norms, GELUs, softmaxes.
  'dots': jax.checkpoint_policies.checkpoint_dots,
  # Save only weight matmuls; also recompute the attention maps (batched dots).
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# (Saving nothing around the whole loss would not lower peak memory: the backward
# would rebuild every residual at once; 'blocks' does it per block instead.)


class TrainState(NamedTuple):
  """Everything that changes during training, as arrays.

  Attributes:
    step: int32 scalar, number of steps taken (applied or skipped).
    params: the model params pytree (float32).
    opt_state: the optax state (`inject_hyperparams(adamw)`).
    rng: uint32 [2] base key; step `s` uses `fold_in(rng, s)`.
    skipped: int32 scalar, steps whose update was dropped (non-finite).
  """

  step: Any  # int32 scalar (host numpy until placed on the mesh)
  params: Any
  opt_state: Any
  rng: Any
  skipped: Any


# ---------------------------------------------------------------------------
# Shardings over the mesh (the devices and the mesh itself: `mesh`).


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host values (identical on every process) -> replicated global arrays."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """A whole host batch (same on every process) -> arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  out: dict[str, jax.Array] = {}
  for k, v in batch.items():
    host = np.asarray(v, np.float32)
    out[k] = jax.make_array_from_callback(host.shape, sharding, host.__getitem__)
  return out


# ---------------------------------------------------------------------------
# Model and optimizer.


def model_kwargs(config) -> dict[str, Any]:
  """The `LMDViT` keyword arguments of `config.model` (what model.json records)."""
  kwargs = {}
  for k, v in config.model.items():
    kwargs[k] = tuple(v) if isinstance(v, list) else v
  return kwargs


def build_model(config, **overrides) -> LMDViT:
  """`LMDViT(**config.model)` with the compute dtype of `config.compute_dtype`,
  remat and the train step's capacity (`config.train_capacity`)."""
  name = config.get('compute_dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}')
  remat = config.get('remat', 'none')
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}')
  train_capacity = pruning.parse_train_capacity(config.get('train_capacity', 'dense'))
  kwargs = {
    **model_kwargs(config),
    'dtype': COMPUTE_DTYPES[name],
    'remat': remat == 'blocks',
    'train_capacity': train_capacity,
    **overrides,
  }
  model = LMDViT(**kwargs)
  model.check_config()
  return model


def make_schedule(config) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the step: linear warmup, then cosine.

  `config.optim` fields: `lr` (peak), `end_lr` (floor of the cosine),
  `warmup_steps`, `restart_every` (0: one cosine from the end of the warmup
  to `config.num_train_steps`; N > 0: the cosine restarts from `lr` every N
  steps after the warmup, SGDR style, as the paper's 2k-step annealing).
  """
  o = config.optim
  peak, floor = float(o.lr), float(o.end_lr)
  warmup, restart = int(o.warmup_steps), int(o.restart_every)
  period = restart if restart > 0 else max(int(config.num_train_steps) - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (step + 1) / max(warmup, 1)
    t = step - warmup
    t = jnp.mod(t, period) if restart > 0 else jnp.clip(t, 0, period)
    cos = floor + (peak - floor) * 0.5 * (1 + jnp.cos(math.pi * t / period))
    return jnp.where(step < warmup, warm, cos)

  return schedule


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW whose learning rate the train step sets from `make_schedule`.

  The learning rate is an injected hyper-parameter, written by the step from
  `state.step` (so a skipped step does not shift the schedule and the logged
  value is the one used). Gradient clipping (`config.optim.grad_clip` > 0) is
  applied in the step, before the optimizer.
  """
  o = config.optim
  return optax.inject_hyperparams(optax.adamw)(
    learning_rate=float(o.lr),
    b1=float(o.b1),
    b2=float(o.b2),
    eps=float(o.eps),
    weight_decay=float(o.weight_decay),
  )


# What `config.optim.trainable` may name: every param, or the confidence
# predictors alone (the rest frozen, e.g. to retrain them on whole images).
TRAINABLE = ('all', 'predictors')


def scale_updates(updates: Any, predictors: float, rest: float = 1.0) -> Any:
  """Multiplies the updates of confidence-predictor params by `predictors` and
  all others by `rest`.

  The predictors are deep, narrow MLPs initialised like the rest of the model
  (truncated normal, std 0.02), so their logits start near 0 and the
  pruning loss hardly moves for hundreds of steps; a larger step for them only
  (`config.optim.predictor_lr_scale`) shortens that. `rest=0` freezes the
  others exactly (AdamW's weight decay is part of the update).
  """
  if predictors == 1.0 and rest == 1.0:
    return updates
  return jax.tree_util.tree_map_with_path(
    lambda path, u: u * (predictors if pruning.is_predictor(path) else rest), updates
  )


def freeze_all_but_predictors(params: Any) -> Any:
  """`params` with every non-predictor leaf behind `stop_gradient`: no backward
  pass is built for what is frozen."""
  return jax.tree_util.tree_map_with_path(
    lambda path, p: p if pruning.is_predictor(path) else jax.lax.stop_gradient(p), params
  )


def init_train_state(
  model: LMDViT,
  tx: optax.GradientTransformation,
  config,
  mesh: jax.sharding.Mesh,
  params: Any = None,
) -> TrainState:
  """A fresh train state, replicated over `mesh`.

  Params are initialised on the host (`init_params`, seeded by `config.seed`,
  the same on every process) unless given (e.g. from a converted checkpoint).
  """
  seed = int(config.get('seed', 0))
  if params is None:
    params = init_params(model, seed)
    if config.get('identity_start', False):
      params = identity_output(params)
    if config.get('fan_in_predictors', False):
      params = fan_in_predictors(params, seed)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  opt_state = jax.tree.map(np.asarray, tx.init(params))
  state = TrainState(
    step=np.zeros((), np.int32),
    params=params,
    opt_state=opt_state,
    rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(seed + 1))),
    skipped=np.zeros((), np.int32),
  )
  return put_replicated(state, mesh)


def abstract_params(model: LMDViT) -> Any:
  """The params pytree of `model` as `jax.ShapeDtypeStruct`s (nothing computed)."""
  side = model.multiple
  return jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x),
    jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32),
  )['params']


def check_params_match(params: Any, reference: Any) -> None:
  """Raises ValueError if two params trees differ in structure or shapes."""
  flat_a = {
    jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  flat_b = {
    jax.tree_util.keystr(k): np.shape(v)
    for k, v in jax.tree_util.tree_flatten_with_path(reference)[0]
  }
  missing, extra = sorted(set(flat_b) - set(flat_a)), sorted(set(flat_a) - set(flat_b))
  shapes = sorted(k for k in set(flat_a) & set(flat_b) if flat_a[k] != flat_b[k])
  if missing or extra or shapes:
    raise ValueError(
      f'params do not fit the model: missing {missing[:5]}, unexpected '
      f'{extra[:5]}, shape mismatches '
      f'{[(k, flat_a[k], flat_b[k]) for k in shapes[:5]]}'
    )


# ---------------------------------------------------------------------------
# The train step.


def _loss_settings(config):
  """(weights: `config.loss` itself, so extra terms' weights come along; the
  FFT mode; hard pruning targets; balanced pruning loss)."""
  lc = config.loss
  return lc, str(lc.fft_mode), bool(lc.hard_targets), bool(lc.get('prune_balanced', False))


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  *,
  model: LMDViT,
  tx: optax.GradientTransformation,
  config,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW step on `batch`; see the module docstring for rng and guard.

  Returns the new state and scalar metrics: 'loss', the unweighted terms 'l1',
  'ssim', 'fft', 'prune', 'grad_norm' (before clipping), 'lr', 'finite'
  (1.0 if applied), 'skipped' (running count), and 'kept_fraction' [n_blocks]
  (share of windows each pruning block kept, Gumbel decisions, batch mean).
  """
  weights, fft_mode, hard_targets, balanced = _loss_settings(config)
  schedule = make_schedule(config)
  clip = float(config.optim.grad_clip)
  policy = REMAT_POLICIES[config.get('remat', 'none')]
  predictors_only = config.optim.get('trainable', 'all') == 'predictors'

  def loss_fn(params, rng):
    if predictors_only:
      params = freeze_all_but_predictors(params)
    k_gumbel, k_dropout = jax.random.split(rng)
    out = model.apply(
      {'params': params}, batch['blur'], train=True, rngs={'gumbel': k_gumbel, 'dropout': k_dropout}
    )
    loss, terms = losses.total_loss(
      out, batch, weights, fft_mode=fft_mode, hard_targets=hard_targets, balanced=balanced
    )
    kept = (
      jnp.stack([jnp.mean(d.astype(jnp.float32)) for d in out.decisions])
      if out.decisions
      else jnp.zeros((0,), jnp.float32)
    )
    return loss, (terms, kept)

  if policy is not None:
    loss_fn = jax.checkpoint(loss_fn, policy=policy)

  rng = jax.random.fold_in(state.rng, state.step)
  (loss, (terms, kept)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, rng)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if clip > 0:
    factor = jnp.minimum(1.0, clip / jnp.maximum(grad_norm, 1e-12))
    grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)

  lr = schedule(state.step)
  opt_state = state.opt_state._replace(
    hyperparams={**state.opt_state.hyperparams, 'learning_rate': lr}
  )
  updates, new_opt_state = tx.update(grads, opt_state, state.params)
  updates = scale_updates(
    updates,
    float(config.optim.get('predictor_lr_scale', 1.0)),
    rest=0.0 if predictors_only else 1.0,
  )
  new_params = optax.apply_updates(state.params, updates)

  def select(new, old):
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

  skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
  new_state = TrainState(
    step=state.step + 1,
    params=select(new_params, state.params),
    opt_state=select(new_opt_state, state.opt_state),
    rng=state.rng,
    skipped=skipped,
  )
  out = {
    'loss': loss,
    **terms,
    'grad_norm': grad_norm,
    'lr': lr,
    'finite': finite.astype(jnp.float32),
    'skipped': skipped,
    'kept_fraction': kept,
  }
  return new_state, out


def make_train_step(
  model: LMDViT, tx: optax.GradientTransformation, config, mesh: jax.sharding.Mesh
):
  """`train_step` jit-compiled: state replicated and donated, batch over `data`,
  float32 matmuls at `config.matmul_precision`."""
  precision = config.get('matmul_precision', 'default')

  def step(state, batch):
    with matmul_precision(precision):  # applies while the step is traced
      return train_step(state, batch, model=model, tx=tx, config=config)

  rep = replicated(mesh)
  return jax.jit(
    step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep), donate_argnums=0
  )


# ---------------------------------------------------------------------------
# Metrics bookkeeping.


def summarize(step_metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Averages a window of step metrics (device arrays) into plain floats.

  Scalars are averaged over the window (the `skipped` count is its last
  value); `kept_fraction` [n_blocks] becomes 'kept/NN' per block plus
  'kept/mean'.
  """
  host = jax.device_get(list(step_metrics))
  out: dict[str, float] = {}
  for key in host[0]:
    values = np.stack([np.asarray(m[key], np.float64) for m in host])
    if key == 'skipped':
      out[key] = float(values[-1])
    elif key == 'kept_fraction':
      per_block = values.mean(axis=0)
      for i, v in enumerate(per_block):
        out[f'kept/{i:02d}'] = float(v)
      if per_block.size:
        out['kept/mean'] = float(per_block.mean())
    else:
      with np.errstate(invalid='ignore'):
        finite = values[np.isfinite(values)]
      out[key] = float(finite.mean()) if finite.size else float('nan')
  return out
