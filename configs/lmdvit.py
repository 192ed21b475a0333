"""LMD-ViT as released (Li et al., ICLR 2024): embed_dim 32, 54,549,163 params.

Evaluate the released weights on ReLoBlur (paper Table 1: PSNR 35.43, SSIM 0.9288,
weighted PSNR 30.29, weighted SSIM 0.8934):

  python -m lmdvit_jax.convert model_LMDVIT.pth ckpt/lmdvit
  python evaluate.py --checkpoint ckpt/lmdvit --data npy:ReLoBlur_test_npy --output out/

Train it as the paper does (section 4.1): AdamW (0.9, 0.999), batch 12, 512x512
blur-aware crops (half centred on blurred pixels) from GoPro and ReLoBlur
together, cosine annealing restarted every 2k steps:

  python train.py --config=configs/lmdvit.py --workdir=runs/lmdvit \
      --config.data.sources="('gopro:/data/GoPro', 'reloblur:/data/ReLoBlur')" \
      --config.eval.source='reloblur:/data/ReLoBlur?split=test'

Not in the paper and chosen here: the initial learning rate (its value was
lost from the paper's text; 2e-4 is the Uformer default LMD-ViT builds on),
the weight decay (Uformer's 0.02), the cosine floor, no warmup, the number of
steps, the 50/50 mixture weights and gradient clipping (off). On a pod, the
batch is split over all devices (12 must be divisible by their number, or
override `batch_size`); `compute_dtype='bfloat16'` and `remat='blocks'` cut
memory for 512x512 x 12.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """Keyword arguments of `lmdvit_jax.models.LMDViT` for the released model."""
  return ml_collections.ConfigDict(
    dict(
      embed_dim=32,
      depths=(1, 2, 8, 8, 2, 8, 8, 2, 1),
      num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2),
      win_size=8,
      mlp_ratio=4.0,
      modulator=True,
      prune_loc=(1, 1, 1, 1, 1, 1, 1, 1, 1),
      keep_threshold=0.5,
      drop_path_rate=0.1,
    )
  )


def get_config() -> ml_collections.ConfigDict:
  """Model (`config.model`, exactly the LMDViT kwargs) and paper training fields."""
  config = ml_collections.ConfigDict()
  config.model = get_model_config()

  config.seed = 0
  config.num_train_steps = 200_000
  config.batch_size = 12  # global, split over the `data` mesh axis
  config.patch_size = 512
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3  # latest N steps kept in WORKDIR/checkpoints
  config.eval_every_steps = 10_000  # 0: never (best/ is then not written)
  config.compute_dtype = 'float32'  # or 'bfloat16' (params stay float32)
  config.remat = 'none'  # 'none', 'blocks', 'dots', 'dots_no_batch' (train_lib)
  # 'dense' (the paper: every window computed, times its straight-through
  # decision) or a kept fraction in (0, 1]: the blocks run on that share of
  # the windows only, forward and backward (docs/training.md, pruned training).
  config.train_capacity = ml_collections.FieldReference('dense', field_type=object)
  # Float32 matmuls: 'default' (the backend's choice: TF32-like on NVIDIA GPUs,
  # bfloat16 passes on TPUs), 'high' or 'highest' (full float32, as PyTorch).
  config.matmul_precision = 'default'
  config.init_from = ''  # a checkpoint directory (e.g. converted weights)
  config.identity_start = False  # zero the output projection: start as the identity
  config.fan_in_predictors = False  # predictor kernels N(0, 1/fan_in), not the official 0.02
  config.distributed = ''  # '' auto, 'true' or 'false': jax.distributed.initialize()

  config.optim = ml_collections.ConfigDict(
    dict(
      lr=2e-4,  # initial (peak) rate; see the docstring
      end_lr=1e-6,  # floor of each cosine cycle
      warmup_steps=0,
      restart_every=2_000,  # 0: one cosine over num_train_steps
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.02,
      grad_clip=0.0,  # max global gradient norm; 0: off
      predictor_lr_scale=1.0,  # step size of the confidence predictors / the rest's
      trainable='all',  # or 'predictors': only they learn, the rest stays frozen
    )
  )
  config.loss = ml_collections.ConfigDict(
    dict(
      l1=1.0,
      ssim=1.0,
      fft=0.1,
      prune=1.0,
      fft_mode='modulus',
      hard_targets=False,
      sharp=0.0,  # L1 outside the blur mask (not in the paper)
      sharp_margin=0.0,  # its free error (0.5 / 255: what 8-bit output hides)
      prune_balanced=False,  # class-balanced pruning loss (not in the paper)
    )
  )
  config.data = ml_collections.ConfigDict(
    dict(
      sources=('gopro:data/GoPro', 'reloblur:data/ReLoBlur'),
      weights=(0.5, 0.5),
      blur_prob=0.5,  # blur-aware crops: half centred on blurred pixels
      flips=True,
      num_threads=8,
      worker_count=0,
    )
  )
  config.eval = ml_collections.ConfigDict(
    dict(
      source='reloblur:data/ReLoBlur?split=test',
      max_images=8,  # first N images of the held-out set
      capacity='masked',  # model capacity for evaluation ('masked' = dense reference)
    )
  )
  config.lock()
  return config
