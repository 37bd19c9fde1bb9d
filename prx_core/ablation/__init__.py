"""Ablations: a design of runs (:mod:`.design`), the steps of each run in a bench budget
(:mod:`.bench_budget`), a resumable runner of ``prx run`` subprocesses (:mod:`.runner`) or of
SLURM array jobs (:mod:`.cluster`), and the report rebuilt from the ablation folder
(:mod:`.results`, :mod:`.stats`, :mod:`.report`, :mod:`.plots`).

The ablation folder holds ``ablation.json`` (the plan), ``bench.json`` (a bench budget's measured
throughput), one run folder per (variant, seed) under ``runs/``, the runs' console logs under
``logs/``, the SLURM job ids and submitit's files under ``slurm/`` (``--executor slurm``), and the
report: ``results.csv``, ``results.json``, ``report.md`` and ``plots/``.
"""
