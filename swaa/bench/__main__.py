"""python -m swaa.bench JOB [options]: one entry point for the benchmarks (`JOB --help` lists a job's options)."""

from __future__ import annotations

import argparse
import logging
import sys

from swaa.bench import kernels, model, profile, sinks, train

JOBS = {"model": model, "kernels": kernels, "sinks": sinks, "train": train, "profile": profile}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m swaa.bench", description=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB", title="jobs")
    for name, module in JOBS.items():
        job = jobs.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(job)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = ["python", "-m", "swaa.bench", *argv]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job = JOBS[args.job]
    try:
        job.check_args(args)  # input errors: one line, exit code 2; failures while running keep their traceback
    except ValueError as e:
        parser.error(str(e))
    job.main(args)


if __name__ == "__main__":
    main()
