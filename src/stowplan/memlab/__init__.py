"""The memory allocator lab: parse real framework allocation logs, replay them through the
allocators that frameworks use and through stowplan's trace-aware allocator, measure, report.

Entry points: :func:`stowplan.memlab.parser.load_trace` (a TF ``__LOG_MEMORY__`` log, plain or
gzipped, or the compact ``.stwtrace.npz`` form), :func:`stowplan.memlab.simulate.replay` and
:mod:`stowplan.memlab.report`. The ``stowplan memsim`` command is a thin wrapper over these.
"""
