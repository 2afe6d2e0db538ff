"""whisper-tune's IPU worker: trains Whisper with optimum-graphcore 0.7.1 under the Poplar SDK's Python.

It runs in a different Python environment from whisper-tune (the SDK's Python 3.8, torch 2.0.1 from the
poptorch wheel, transformers 4.29.2; ``constraints.txt`` beside this package) and so imports nothing from
whisper-tune. The ``ipu`` plugin writes a job file (``job.py`` says what is in it), runs
``python -m whisper_tune_ipu_worker JOB.json`` with the SDK's Python, and reads back a result file whose
``train_result`` has the fields of whisper-tune's ``TrainResult``: generated token ids per eval set and phase
(the core decodes and scores them, as for every backend), the training log, steps and timings.

``--stand-in`` replaces optimum-graphcore's ``IPUSeq2SeqTrainer`` with transformers' ``Seq2SeqTrainer`` on
the CPU, in fp32: a test mode so that the data loading, static padding, fixed batches, generation and result
file are exercised without the SDK. It is never the IPU path and never used on IPUs.

Python 3.8 syntax only (the SDK's Python): no ``match``, no ``X | Y`` outside annotations, no
``str.removeprefix``, no ``zip(strict=...)``.
"""

__version__ = "0.1.0"

JOB_FORMAT = "whisper-tune-ipu-job"
RESULT_FORMAT = "whisper-tune-ipu-result"
FORMAT_VERSION = 1
