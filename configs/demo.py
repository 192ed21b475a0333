"""The CPU demo: a small LMD-ViT learns to remove synthetic local motion blur.

    bash setup.sh && .venv/bin/python demo.py      # evaluates the shipped weights (about 30 s)
    python demo.py --train --workdir=W             # trains from scratch: 3500 steps, seed 0

The shipped weights are three such runs (lmdvit_jax/demo_weights/README.md),
each from the weights of the one before: the 3500 steps above; 3500 more,
`python demo.py --train --workdir=W2 --config.init_from=W --config.seed=1`;
then 1500 on more photos, `python demo.py --train --workdir=W3
--config.init_from=W2 --config.seed=7 --config.num_train_steps=1500
--config.data.sources="('synthetic?size=128&photos=packages',)"`, exported with
`python demo.py --workdir=W3 --export_weights` (keep threshold chosen on the
validation photos: 0.5). Measured (16 held-out 384x256 images, capacity
'exact', 8-pass self-ensemble): PSNR 36.60 -> 36.95 dB, weighted PSNR 24.45 ->
25.19 dB, PSNR outside the blur mask 51.98 dB, pruning recall 0.959 and
precision 0.348 (two of the demo's five targets short; README, "The demo");
one pass: 36.74 dB, 25.12 dB, 49.23 dB, 0.952, 0.346. Training took 77 + 81 +
37 min of wall time on a 2-core CPU (other jobs shared or paused it part of
the time).

Same architecture as the released model, narrower (embed_dim 16), shallower
(1-2 blocks per stage) and with 4x4 windows (inputs in multiples of 64). It
trains on 64x64 blur-aware crops of the synthetic generator (scikit-image
photos, no download) and `demo.py` then evaluates it on held-out synthetic
images (other photos, other seeds) at 384x256. Pruning runs in the two last
decoder stages (full and half resolution), where 4x4 windows are fine enough
to follow the blur masks; the paper's Table 4 likewise varies where pruning
happens.
"""

import ml_collections

from configs import lmdvit


def get_config() -> ml_collections.ConfigDict:
  config = lmdvit.get_config()
  config.model.update(
    embed_dim=16,
    depths=(2, 2, 1, 1, 1, 1, 1, 2, 2),
    num_heads=(1, 1, 2, 2, 4, 4, 2, 1, 1),
    win_size=4,
    prune_loc=(0, 0, 0, 0, 0, 0, 0, 1, 1),
    drop_path_rate=0.0,
  )
  config.update(
    num_train_steps=3500,
    batch_size=8,
    patch_size=64,
    log_every_steps=50,
    checkpoint_every_steps=100,
    keep_checkpoints=2,
    eval_every_steps=500,
    identity_start=True,
    fan_in_predictors=True,
  )
  config.optim.update(
    lr=1e-3, warmup_steps=100, restart_every=0, end_lr=1e-5, grad_clip=1.0, predictor_lr_scale=3.0
  )
  config.loss.update(prune=1.0, prune_balanced=True, sharp=10.0, sharp_margin=0.5 / 255)
  config.data.update(sources=('synthetic?size=128',), weights=None, num_threads=2)
  config.eval.update(source='synthetic?size=384x256&count=4', max_images=4)
  # Held-out evaluation that demo.py runs after training.
  with config.unlocked():
    config.demo = ml_collections.ConfigDict(
      dict(
        data='synthetic?size=384x256&count=16',
        num_panels=4,
        # A second held-out set sharing nothing with training (other photos,
        # shapes, motion, noise, JPEG: lmdvit_jax/data/outside.py); '' skips it.
        outside_data='outside?size=384x256&count=12',
        # `--export_weights` chooses the keep threshold on validation images from
        # photos in neither the training nor the held-out split (split `val`): the
        # highest that keeps recall there at least calibration_recall. ('' keeps the
        # checkpoint's; on training photos recall never reached 0.9, docs/demo_training.md.)
        calibration_data='synthetic?size=384x256&count=16&seed=1',
        calibration_recall=0.9,
        # Passes per image at evaluation, flipped and transposed copies averaged
        # (inference.Deblurrer); --export_weights records it in inference.json.
        self_ensemble=8,
      )
    )
  return config
