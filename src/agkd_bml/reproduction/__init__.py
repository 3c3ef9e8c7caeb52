"""Reproducing the paper: scales, the runs each table needs, how they are scored, and the targets.

Below the command line and above training, evaluation and analysis: :mod:`.recipes` (scales, runs, scorers),
:mod:`.multistep` (the multi-step comparison), :mod:`.capacity` (the capacity study) and :mod:`.targets`
(each table as data, :func:`~agkd_bml.reproduction.targets.build`).
"""
