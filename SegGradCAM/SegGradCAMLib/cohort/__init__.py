"""Cohorts: one per-case function run over a list of volumes, in this process one case after
another (``--engine local``) or as Ray tasks on this machine or a cluster (``--engine ray``).

- :mod:`.cases`: the cases of a list (ids, channel files);
- :mod:`.model_cache`: the model loaded once per process;
- :mod:`.run`: the engines, resumability, failures and progress;
- :mod:`.tasks`: the per-case tasks of ``explain`` and ``evaluate`` (the same functions a single
  run uses) and the cohort runs of both.
"""
