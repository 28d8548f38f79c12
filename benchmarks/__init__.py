"""Side-by-side timings of minisegnet against PyTorch; ``python -m benchmarks.run`` runs them all.

The scripts here also run on their own (``python benchmarks/bench_conv.py``); results worth
keeping go to ``BENCHMARKS.md`` with the date, the machine and the command.
"""
