"""LMD-ViT: the U-shaped local motion deblurring Transformer with window pruning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lmdvit_jax.models import pruning
from lmdvit_jax.models.adawpt import BLOCKS, AdaWPTStage

NUM_STAGES = 9  # 4 encoder stages, bottleneck, 4 decoder stages.
# Compute dtypes by name (params stay float32), as configs and model.json spell them.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Float32 matmul precision by name (config field and flag `matmul_precision`):
# 'default' lets the backend choose (TF32-like on NVIDIA GPUs, one bfloat16
# pass on TPUs, full float32 on CPUs); 'high' (bfloat16_3x / TF32-level) and
# 'highest' (full float32, PyTorch's default for float32 tensors) ask for more.
MATMUL_PRECISIONS = ('default', 'high', 'highest')


def matmul_precision(name: str):
  """A context under which traced matmuls and convolutions get precision `name`
  (one of MATMUL_PRECISIONS); enter it where the program is traced."""
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f'matmul_precision must be one of {MATMUL_PRECISIONS}, got {name!r}')
  return jax.default_matmul_precision(name)


STAGE_NAMES = tuple(
  [f'encoder_{i}' for i in range(4)] + ['bottleneck'] + [f'decoder_{i}' for i in range(4)]
)

# PyTorch's default conv init (kaiming uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


@flax.struct.dataclass
class LMDViTOutput:
  """What `LMDViT.__call__` returns.

  Attributes:
    restored: `[B, H, W, 3]` input + residual * gate (not clamped).
    gate: `[B, H, W, 1]` max(sigmoid(gate logit), 0.1).
    scores: per confidence predictor (network order) token logits `[B, h, w, 2]`
      in the unrolled grid of its stage; channel 0 is "keep".
    decisions: matching keep maps `[B, h/ws, w/ws]` in {0, 1} over the window
      grid the block used (for a shifted block, the grid of the rolled map).
    dropped: matching `[B]` counts of kept windows that a fixed capacity dropped.
  """

  restored: jax.Array
  gate: jax.Array
  scores: tuple[jax.Array, ...]
  decisions: tuple[jax.Array, ...]
  dropped: tuple[jax.Array, ...]


class Upsample(nn.Module):
  """2x2 transposed convolution with stride 2 (params `kernel` `[2, 2, in, out]`, `bias`)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, cin = x.shape
    kernel = self.param('kernel', conv_init, (2, 2, cin, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # Stride equals kernel size: every output pixel sees exactly one input pixel.
    y = jnp.einsum('bhwi,pqio->bhpwqo', x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


def drop_path_rates(depths: Sequence[int], rate: float) -> list[tuple[float, ...]]:
  """Stochastic depth per block of each stage, as the official schedule.

  Encoder blocks ramp linearly from 0 to `rate`; bottleneck blocks use `rate`;
  the decoder reuses the encoder ramp reversed.
  """
  enc = [float(v) for v in np.linspace(0.0, rate, sum(depths[:4]))]
  rates = [tuple(enc[sum(depths[:i]) : sum(depths[: i + 1])]) for i in range(4)]
  rates.append((rate,) * depths[4])
  dec = enc[::-1]
  for j in range(4):
    lo, hi = sum(depths[5 : 5 + j]), sum(depths[5 : 6 + j])
    rates.append(tuple(dec[lo:hi]))
  return rates


class LMDViT(nn.Module):
  """LMD-ViT (Li et al., ICLR 2024), NHWC, images in [0, 1].

  Attributes:
    embed_dim: width C of the first stage (32 released, 16 "Small").
    depths: blocks per stage (9 entries: 4 encoder, bottleneck, 4 decoder).
    num_heads: attention heads per stage (9 entries).
    win_size: window side ws; inputs must be multiples of 16 * ws.
    mlp_ratio: W-LeFF hidden width / C.
    modulator: learned window modulator in the decoder stages.
    prune_loc: 1 where a stage prunes windows (9 entries).
    keep_threshold: inference keeps a window where softmax keep prob > this.
    decision_rule: the inference rule of `pruning.DECISION_RULES` ('threshold').
    block: the Transformer block of `adawpt.BLOCKS` ('lewin', the official one).
    capacity: `'exact'` (every kept window runs, in a loop over chunks of
      `ceil(nW / capacity_chunks)` windows), a float in (0, 1] (fixed
      budget: lowest-confidence overflow is dropped and counted), or
      `'masked'` (compute every window, select outputs: the reference).
    capacity_chunks: chunks per block in `'exact'` mode; at most
      `1 / capacity_chunks` of a block's windows is computed beyond the
      batch's largest kept count.
    train_capacity: `'dense'` (training computes every window, the paper's
      way) or a fraction in (0, 1]: training runs attention and feed-forward
      on the gathered windows only (`adawpt.AdaWPTStage`); no effect on
      inference.
    drop_path_rate: stochastic depth rate (training only).
    remat: rematerialise each Transformer block in the backward pass (training
      memory; no effect on results).
    dtype: compute dtype of projections (params stay float32).
  """

  embed_dim: int = 32
  depths: Sequence[int] = (1, 2, 8, 8, 2, 8, 8, 2, 1)
  num_heads: Sequence[int] = (1, 2, 4, 8, 16, 16, 8, 4, 2)
  win_size: int = 8
  mlp_ratio: float = 4.0
  modulator: bool = True
  prune_loc: Sequence[int] = (1, 1, 1, 1, 1, 1, 1, 1, 1)
  keep_threshold: float = 0.5
  decision_rule: str = 'threshold'
  block: str = 'lewin'
  capacity: str | float = 'exact'
  capacity_chunks: int = pruning.DEFAULT_CHUNKS
  train_capacity: str | float = 'dense'
  drop_path_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Lists (e.g. from JSON or a ConfigDict) become tuples: the module stays
    # hashable, so it can key caches and be a static argument.
    for name in ('depths', 'num_heads', 'prune_loc'):
      value = getattr(self, name)
      if not isinstance(value, tuple):
        object.__setattr__(self, name, tuple(value))
    super().__post_init__()

  def describe(self) -> dict[str, Any]:
    """The architecture and inference attributes that results record (metrics.json,
    an export's .json), with the compute dtype by name."""
    names = (
      'embed_dim',
      'depths',
      'num_heads',
      'win_size',
      'mlp_ratio',
      'modulator',
      'prune_loc',
      'keep_threshold',
      'decision_rule',
      'capacity',
      'capacity_chunks',
    )
    return {k: getattr(self, k) for k in names} | {'dtype': np.dtype(self.dtype).name}

  @property
  def multiple(self) -> int:
    """Input sides must be multiples of this (four 2x down-samplings of ws windows)."""
    return self.win_size * 16

  def check_config(self) -> None:
    """Raises ValueError naming the first invalid attribute."""
    for name in ('depths', 'num_heads', 'prune_loc'):
      if len(getattr(self, name)) != NUM_STAGES:
        raise ValueError(
          f'LMDViT.{name} needs {NUM_STAGES} entries (4 encoder stages, '
          f'bottleneck, 4 decoder stages), got {list(getattr(self, name))}'
        )
    widths = [self.embed_dim * 2**i for i in range(5)] + [
      self.embed_dim * 2 ** (4 - j) for j in range(4)
    ]
    for i, (width, heads) in enumerate(zip(widths, self.num_heads)):
      if heads < 1 or width % heads:
        raise ValueError(
          f'stage {STAGE_NAMES[i]} has width {width}, not divisible by num_heads={heads}'
        )
    if self.embed_dim % 4:
      raise ValueError(
        f'embed_dim must be a multiple of 4 (the confidence predictor '
        f'uses C/4 channels), got {self.embed_dim}'
      )
    if self.win_size < 2 or self.win_size % 2:
      raise ValueError(f'win_size must be an even number >= 2, got {self.win_size}')
    if self.capacity != pruning.parse_capacity(self.capacity):
      raise ValueError(
        f"capacity must be 'exact', 'masked' or a float in (0, 1], got {self.capacity!r}"
      )
    pruning.chunk_size(1, self.capacity_chunks)  # raises on a bad value
    pruning.parse_train_capacity(self.train_capacity)  # raises on a bad value
    if not 0 <= self.keep_threshold < 1:
      raise ValueError(f'keep_threshold must be in [0, 1), got {self.keep_threshold}')
    if self.block not in BLOCKS:
      raise ValueError(f'block must be one of {sorted(BLOCKS)}, got {self.block!r}')
    if self.decision_rule not in pruning.DECISION_RULES:
      raise ValueError(
        f'decision_rule must be one of {sorted(pruning.DECISION_RULES)}, got {self.decision_rule!r}'
      )

  def check_input(self, x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'LMDViT expects images [B, H, W, 3] (NHWC), got shape {x.shape}')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(
        f'LMDViT expects float images in [0, 1], got dtype {x.dtype}; divide uint8 images by 255'
      )
    h, w = x.shape[1:3]
    if h % self.multiple or w % self.multiple:
      raise ValueError(
        f'image sides must be multiples of 16 * win_size = {self.multiple}, '
        f'got {h}x{w}; pad first (lmdvit_jax.inference pads for you)'
      )

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LMDViTOutput:
    """Deblurs `x` `[B, H, W, 3]`; `train=True` needs rngs `gumbel` (and `dropout`)."""
    self.check_config()
    self.check_input(x)
    c = self.embed_dim
    dpr = drop_path_rates(self.depths, self.drop_path_rate)
    scores, decisions, dropped = [], [], []

    def stage(i: int, width: int, y: jax.Array) -> jax.Array:
      out, s, d, dr = AdaWPTStage(
        width,
        self.depths[i],
        self.num_heads[i],
        self.win_size,
        self.mlp_ratio,
        modulator=self.modulator and i > 4,
        prune=bool(self.prune_loc[i]),
        keep_threshold=self.keep_threshold,
        decision_rule=self.decision_rule,
        block=self.block,
        drop_path=dpr[i],
        capacity=self.capacity,
        chunks=self.capacity_chunks,
        train_capacity=pruning.parse_train_capacity(self.train_capacity),
        remat=self.remat,
        dtype=self.dtype,
        name=STAGE_NAMES[i],
      )(y, train=train)
      scores.extend(s)
      decisions.extend(d)
      dropped.extend(dr)
      return out

    y = nn.Conv(
      c,
      (3, 3),
      padding=((1, 1), (1, 1)),
      dtype=self.dtype,
      kernel_init=conv_init,
      name='input_proj',
    )(x)
    y = nn.leaky_relu(y, negative_slope=0.01)
    skips = []
    for i in range(4):
      y = stage(i, c * 2**i, y)
      skips.append(y)
      y = nn.Conv(
        c * 2 ** (i + 1),
        (4, 4),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        kernel_init=conv_init,
        name=f'downsample_{i}',
      )(y)
    y = stage(4, c * 16, y)
    for j in range(4):
      out = c * 2 ** (3 - j)
      y = Upsample(out, dtype=self.dtype, name=f'upsample_{j}')(y)
      y = jnp.concatenate([y, skips[3 - j]], axis=-1)
      y = stage(5 + j, 2 * out, y)
    y = nn.Conv(
      4,
      (3, 3),
      padding=((1, 1), (1, 1)),
      dtype=self.dtype,
      kernel_init=conv_init,
      name='output_proj',
    )(y)
    y = y.astype(jnp.float32)
    gate = jnp.maximum(jax.nn.sigmoid(y[..., 3:]), 0.1)
    restored = x + y[..., :3] * gate
    return LMDViTOutput(
      restored=restored,
      gate=gate,
      scores=tuple(scores),
      decisions=tuple(decisions),
      dropped=tuple(dropped),
    )


_TRUNC_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def init_params(model: LMDViT, rng: int | jax.Array = 0) -> dict[str, Any]:
  """Initialises `model`'s params on the host with numpy.

  Same distributions as `model.init` (truncated normal 0.02 for linear layers
  and bias tables, PyTorch-style uniform for convolutions, N(0, 1) modulators,
  zero biases, unit norms), but in about a second: a jitted flax `init`
  compiles one random kernel per parameter, which takes minutes on CPU for the
  released model.

  Args:
    model: the module (its attributes fix the shapes; no input is needed).
    rng: an int seed or a JAX PRNG key.

  Returns:
    The params pytree (nested dict of float32 jax arrays).
  """
  side = model.multiple
  abstract = jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x),
    jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32),
  )['params']
  if isinstance(rng, int):
    entropy = [rng]
  else:
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    entropy = [int(v) for v in np.asarray(data).ravel()]
  gen = np.random.default_rng(entropy)

  def trunc_normal(shape, std):
    z = gen.standard_normal(shape)
    while np.any(bad := np.abs(z) > 2):
      z[bad] = gen.standard_normal(int(bad.sum()))
    return z * (std / _TRUNC_NORMAL_STD)

  def leaf(path, x):
    names = [k.key for k in path]
    name, parent, shape = names[-1], names[-2], x.shape
    if name == 'bias':
      value = np.zeros(shape)
    elif name == 'scale':
      value = np.ones(shape)
    elif name == 'modulator':
      value = gen.standard_normal(shape)
    elif name == 'relative_position_bias_table':
      value = trunc_normal(shape, 0.02)
    elif parent == 'dwconv':
      value = gen.uniform(-1 / 3, 1 / 3, shape)  # fan-in 9
    elif len(shape) == 4:  # conv, transposed conv: [kh, kw, in, out]
      bound = 1 / np.sqrt(np.prod(shape[:-1]))
      value = gen.uniform(-bound, bound, shape)
    else:  # linear
      value = trunc_normal(shape, 0.02)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def identity_output(params: dict[str, Any]) -> dict[str, Any]:
  """`params` with the output projection zeroed: the network starts as the identity.

  `restored = x + residual * gate` with a zero residual everywhere, so training
  from scratch starts from the blurred input instead of a random perturbation
  of it, and sharp regions start (and can stay) untouched. Gradients still
  reach every layer: the output projection's own gradient is its input
  features times the gate, which are not zero.
  """
  out = dict(params)
  out['output_proj'] = jax.tree.map(jnp.zeros_like, params['output_proj'])
  return out


def fan_in_predictors(params: dict[str, Any], rng: int = 0) -> dict[str, Any]:
  """`params` with every confidence-predictor kernel redrawn from N(0, 1/fan_in).

  The official initialisation (truncated normal, std 0.02) makes each of the
  predictor's four linear layers shrink its input about 50-fold, so its logits
  and their gradients start around 1e-8: below Adam's epsilon, where updates
  vanish and the pruning loss stays at ln 2 for hundreds of steps. Fan-in
  scaling starts the logits at order one. For training from scratch only.
  """
  gen = np.random.default_rng([rng, 0x9E37])

  def leaf(path, x):
    if str(getattr(path[-1], 'key', '')) == 'kernel' and pruning.is_predictor(path) and x.ndim == 2:
      return jnp.asarray(gen.standard_normal(x.shape) / np.sqrt(x.shape[0]), jnp.float32)
    return x

  return jax.tree_util.tree_map_with_path(leaf, params)


def count_params(params: Any) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
