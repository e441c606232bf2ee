"""Agent benchmarks: batching policies vs load (simulated device calibrated on published latency
fits), time slicing vs unsynchronised threads, and the real agent over HTTP.

Callers: ``stowplan bench batching|timeslice|http``. Each benchmark returns rows and renders a
Markdown table from what it measured; nothing here is a constant result. Not imported by the
agent itself.
"""
