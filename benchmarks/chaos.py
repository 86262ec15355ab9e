"""
The chaos run of issue 11: background jobs through workers that fail at
random, the job server killed with SIGKILL during the run and restarted on
the same store, then a check that every job ended completed or dead, none
was lost, none ran more often than its policy allows except the runs the
kills explain, and every retry waited out its backoff.

    python3 benchmarks/chaos.py --store sqlite
    python3 benchmarks/chaos.py --store postgresql --jobs 10000 --kills 2
    python3 benchmarks/chaos.py --store redis --workers 48 --keep-workdir

The server is this tree's C{twistd -n gearman} with
C{--policy chaos=attempts:4,backoff:200ms..2s,on:lost+timeout+fail+exception}
(plus C{,keep:1h} when the server accepts it: then every completed job's
result is fetched with C{show result}). See docs/reliability.md, "Chaos:
retries, dead set and kills". Exit status 0 only if every check passes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _chaoskit  # noqa: E402
from _hostilekit import installSignalHandlers  # noqa: E402


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "redis"], default="sqlite",
                        help="PostgreSQL: 127.0.0.1:5432 database test, a schema of its own; "
                             "Redis: 127.0.0.1:6379, a key prefix of its own (both removed after)")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs, evenly spread over the jobs")
    parser.add_argument("--workers", type=int, default=32, help="worker processes")
    parser.add_argument("--fail-rate", type=float, default=0.3,
                        help="share of attempts that fail, evenly among WORK_FAIL, WORK_EXCEPTION, "
                             "exit mid-job and timeout")
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--backoff", default="200ms..2s")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="the workers' CAN_DO_TIMEOUT")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the worker logs and server logs (else removed after a PASS)")
    args = parser.parse_args(argv)
    installSignalHandlers()
    workdir = tempfile.mkdtemp(prefix="txgear-chaos-")
    report = _chaoskit.run(args.store, jobs=args.jobs, kills=args.kills, workers=args.workers,
                           failRate=args.fail_rate, attempts=args.attempts, backoff=args.backoff,
                           timeoutMs=args.timeout_ms, seed=args.seed, deadline=args.deadline,
                           workdir=workdir)
    print(f"store {args.store}, {args.jobs} jobs, {args.kills} kills, {args.workers} workers, "
          f"fail rate {args.fail_rate}")
    print(report.text())
    if report.ok and not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
