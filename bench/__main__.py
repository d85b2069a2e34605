"""Run the benchmarks: ``python -m bench [--db sqlite|postgresql|both] [--duration S] [--only SUITE]``.

Every figure is measured beside its floor in the same run on the same machine, and printed with its
ratio and its target. The Markdown report goes to stdout and to ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import ROOT, Options, Section, log
from bench.report import header, section_markdown, summary
from bench.suites import SUITES


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both", help="databases (default both)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell, and until every client had an answer (default min(0.5, duration/5))")
    p.add_argument("--only", type=_names, default=None, metavar="SUITE[,SUITE]",
                   help=f"suites to run (default all: {', '.join(SUITES)})")
    p.add_argument("--workloads", type=_names, default=None, metavar="W[,W]", help="only these workloads of the suites")
    p.add_argument("--concurrency", type=_ints, default=(1, 16), metavar="N[,N]", help="concurrent clients (default 1,16)")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator HTTP client (default raw)")
    p.add_argument("--target", choices=["both", "hub", "floor"], default="both", help="servers to measure (default both)")
    p.add_argument("--preload", type=int, default=1000, help="Patients pre-loaded for the read workload (default 1000)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md", help="Markdown report file")
    p.add_argument("--profile", action="store_true",
                   help="sample the hub with py-spy during its cells into bench/results/profiles/ (see bench/profile.py)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes of the hub (FHIRHUB_WORKERS) and of the floor alike (default 2; 1 with --profile,"
                        " which samples one process)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, server logs)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    unknown = [s for s in args.only or () if s not in SUITES]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)}; known: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    workers = args.workers or (1 if args.profile else 2)
    os.environ["FHIRHUB_WORKERS"] = str(workers)  # the hub reads it; harness.server passes it to the floor
    opts = Options(
        duration=args.duration,
        warmup=args.warmup if args.warmup is not None else min(0.5, args.duration / 5),
        concurrency=args.concurrency,
        client=args.client,
        targets=("hub", "floor") if args.target == "both" else (args.target,),
        workloads=args.workloads,
        preload=args.preload,
        profile_dir=ROOT / "bench" / "results" / "profiles" if args.profile else None,
        verbose=not args.quiet,
    )
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    suites = [SUITES[name] for name in (args.only or SUITES)]
    workdir = Path(tempfile.mkdtemp(prefix="fhirhub-bench-"))
    sections: list[Section] = []
    started = time.monotonic()
    try:
        for suite in suites:
            for db in dbs:
                try:
                    sections.append(suite.run(db, workdir, opts))
                except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others
                    if not args.quiet:
                        traceback.print_exc()
                    sections.append(Section(suite.NAME, db, suite.TITLE, error=f"{type(exc).__name__}: {exc}"))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if opts.profile_dir is not None:
        log(f"profiles in {opts.profile_dir}: python -m bench.profile {opts.profile_dir}/*.txt")
    report = "\n".join([header(opts, dbs), *(section_markdown(s) for s in sections), summary(sections)])
    report += f"\n_{time.monotonic() - started:.0f} s in all._\n"
    sys.stdout.write(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    if not args.quiet:
        log(f"wrote {args.out}")
    if any(s.error for s in sections):
        return 1
    if args.strict and any(c.passed is False for s in sections for c in s.checks()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
