"""``python -m whisper_tune_ipu_worker JOB.json [--stand-in]``: run a job, write its result file.

Exit codes: 0 done; 2 a problem reported in one line on stderr (bad job file, unreadable data, model the
pinned transformers cannot load, optimum-graphcore/poptorch missing); anything else is a crash (its
traceback is on stderr).
"""

from __future__ import annotations

import argparse
import sys

from whisper_tune_ipu_worker.data import WorkerError

EXIT_WORKER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whisper_tune_ipu_worker", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="job file written by whisper-tune's ipu plugin")
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="CPU test mode: transformers' Seq2SeqTrainer instead of IPUSeq2SeqTrainer (never on IPUs)",
    )
    args = parser.parse_args(argv)
    from dataclasses import replace

    from whisper_tune_ipu_worker.job import load_job
    from whisper_tune_ipu_worker.run import log, run, write_result

    try:
        job = load_job(args.job)
        if args.stand_in:
            job = replace(job, stand_in=True)
        log("job {} ({})".format(args.job, "stand-in: Seq2SeqTrainer on the CPU" if job.stand_in else "IPU"))
        result = run(job)
        write_result(result, job.result_file)
        log(f"result written to {job.result_file}")
    except WorkerError as exc:
        print(f"whisper-tune-ipu-worker: error[{exc.kind}]: {exc}", file=sys.stderr, flush=True)
        return EXIT_WORKER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
