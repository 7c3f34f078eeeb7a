"""Experiments: config schemas, the `galen` command line and its entry points (train, search, sweep, study, compress,
export, finetune, report, hardware), run directories and the scoring of runs."""
