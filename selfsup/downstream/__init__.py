"""After pretraining: evaluation (k-NN, linear probes), fine-tuning on few labels,
distillation and self-training, label subsets, and weight export.

This layer sits above the config layer (like ``trainer.loop``): it reads run directories and
configs, builds backbones through ``trainer.build`` and feeds them through the pipeline's
``Loader``. The ``selfsup eval|finetune|distill|export`` commands call into it.
"""
