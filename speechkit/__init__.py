"""speechkit: config-driven fine-tuning of speech models. The house, one place per concern (docs/contributing.md):

- cli.py, config.py, validation.py   the one set-up path: schemas registered, moved keys refused, values checked
- commands/                          what each top-level script runs (train, evaluate, inspect_data, transcribe, ...)
- data/                              conf/dataset: sources, the checking pass, samplers, streams, the demo corpora
- tasks/                             conf/task: the task contract (base.py), its registry, and each task
- models/                            conf/model: one module per model family, and the fast paths
- training/                          conf/trainer: the loop, its batches, optimizer and schedule, checkpoints
- hardware.py, logger.py             conf/hw, conf/logger
- hub.py, report.py, plots.py        what a run ships and shows: the model card, report.html, the pictures
- rundir.py                          every file name of a run dir
- sagemaker/                         hw=sagemaker's job, its container entry, and the inference handler
- sweep.py                           the summary of a multirun
"""
