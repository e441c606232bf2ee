"""Agent benchmarks: batching policies vs load (simulated device calibrated on published latency
fits), time slicing vs unsynchronised threads, the real agent over HTTP, and the agent's data
paths side by side with a direct ONNX Runtime call.

Callers: ``stowplan bench batching|timeslice|http|dataplane``. Each benchmark returns rows and
renders a Markdown table from what it measured; nothing here is a constant result. Not imported
by the agent itself.
"""
