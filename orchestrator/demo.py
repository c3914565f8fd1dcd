"""The demo search `make demo` runs: embedded so it works from any folder.

`examples/demo.yaml` holds the same text (a test keeps them equal).
"""

DEMO_YAML = """\
# The demo: ResNet-20 on Fashion-MNIST, channel pruning under a 50% FLOPs budget.
# 16 prune-then-finetune trials, 2 at a time, on a local Ray with a local MLflow (sqlite).
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
  groups: auto
search:
  searcher: random
  trials: 16
  max_concurrent: 2
  cpus_per_trial: 1
finetune:
  epochs: 1
  lr: 0.01
"""
