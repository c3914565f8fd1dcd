"""The demo search `make demo` runs: embedded so it works from any folder.

`examples/demo.yaml` holds the same text (a test keeps them equal).
"""

DEMO_YAML = """\
# The demo: ResNet-20 on Fashion-MNIST, channel pruning under a 50% FLOPs budget, searched
# proxy-first: 50 Bayesian-optimisation trials each score a policy by its accuracy after
# BatchNorm calibration (seconds, no fine-tuning), then the 4 best are fine-tuned for an epoch.
# 2 trials at a time on a local Ray, every trial tracked in a local MLflow (sqlite).
name: demo-resnet20-fashion
workdir: runs
model:
  name: resnet20
data:
  name: fashion-mnist
  train_subset: 12000   # subsets keep the demo within minutes on 2 CPU cores
  val_subset: 1000
  test_subset: 2000
  batch_size: 128
pretrain:
  epochs: 4
  lr: 0.1
  warmup_epochs: 0.2
  label_smoothing: 0.1
space:
  schemes: [channel]
  ratio_bounds: [0.0, 0.8]
  budget: {kind: flops, keep: 0.5}
search:
  searcher: bo
  trials: 50
  max_concurrent: 2
  cpus_per_trial: 1
  finalists: {count: 4, epochs: 1, select: top}
finetune:
  epochs: 0             # proxy trials: BatchNorm calibration only
  lr: 0.01
"""
