"""The public GPU-sharing benchmark (Alibaba 2023 trace, FGD protocol) and the benchmark instances
built from real latency fits: a client of the placement engine, never part of it.

Modules: ``tracefiles`` (reads the trace's node and pod lists, the published FGD results and the
latency fits), ``tracesim`` (the arrival-by-arrival simulator of the FGD protocol with our
policies), ``tracedefrag`` (its bounded defragmentation), ``tracebound`` (the LP upper bounds) and
``synth`` (synthetic and mixed placement instances for ``stowplan bench placement`` and tests).
Callers: ``stowplan bench fgd`` and ``stowplan bench placement`` (thin shells) and tests. This
package imports ``stowplan.placement``; the engine never imports it (an import-linter contract).
"""
