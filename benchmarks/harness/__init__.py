"""The machinery behind ``python -m benchmarks.run``, one concern per file.

``machine``   what the numbers were measured on: CPU, cores, BLAS and its kernel, thread
              counts, versions; the BLAS thread limit; the SGEMM peak the GFLOP/s are read against
``timing``    interleaved A/B timing with medians after a warm-up, device synchronisation
``shapes``    the layers of a real model and the shapes they see, recorded on one forward;
              convolution FLOPs
``cases``     what each row runs, on our side and on PyTorch's, on identical arrays
``memory``    peak working memory of a training step or an eval forward, in a fresh process
``report``    the Markdown tables, the summary against the issue's targets, the JSON record

The older scripts (``bench_conv.py``, ``bench_training_step.py``, ``bench_memory.py``) can
take their machine description from :func:`machine.machine_record` and
:func:`machine.set_blas_threads` (which works without threadpoolctl), and their timing loop
from :func:`timing.interleaved`.
"""
