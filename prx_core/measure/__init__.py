"""What a recipe costs: projected before any compute (:mod:`~prx_core.measure.cost`, the dry run)
and timed on this machine (:mod:`~prx_core.measure.bench`, with the host-sync detector of
:mod:`~prx_core.measure.host_sync`; :mod:`~prx_core.measure.throughput` times several recipes'
real training steps side by side for an ablation's bench budget)."""
