"""How long do the ranks of a large job take to load? A job of N ranks made from a real 2-rank run.

    python benchmarks/ranks.py [--ranks 1024] [--runs 3] [--from runs/ddp]

Runs the DDP sample on two ranks under torchrun (gloo, this CPU) unless `--from` names a run
directory of it, copies its rank 1 report to ranks 0..N-1 (8 ranks per node, one straggler
with every op 1.5x slower: `tests/torchrun_job.py`'s `replicate_ranks`), then times, cold
(a fresh loader each run, the files in the page cache):

* the CLI path: `memwall report`'s loading (every window read, checked and merged per rank)
  and the summary with the ranks' spread, rendered to a string;
* the tab's `/ranks`: a fresh plugin, `ranks_impl` (scan, read, spread).

Prints the best and the median of `--runs` runs of each. Not a test: the figures depend on the
machine; the tests check what the views show, this says how long they take.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwall_plugin.tb_plugin.plugin import MemwallPlugin  # noqa: E402
from torchrun_job import SAMPLE, replicate_ranks, torchrun  # noqa: E402

from memwall_plugin import cli  # noqa: E402
from memwall_plugin.console import Summary, SummaryOptions  # noqa: E402


def real_run(where: Path) -> Path:
    result = torchrun("-m", "memwall_plugin.cli", "run", "--logdir", "runs/ddp", str(SAMPLE), "--no-profile",
                      "--steps", "3", "--width", "64", "--depth", "2", cwd=where)
    if result.returncode != 0:
        sys.exit(f"the 2-rank run failed:\n{result.stderr[-3000:]}")
    return where / "runs" / "ddp"


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--from", dest="source", type=Path, help="a run directory of a 2-rank DDP run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        source_run = args.source or real_run(base)
        (source,) = (source_run / "plugins" / "memwall").glob("rank1_*.json")
        run = base / "logdir" / "job"
        replicate_ranks(source, run, args.ranks, straggler=args.ranks // 2 + 1)

        def cli_path() -> None:
            job = cli.load_jobs(run)[0]
            report = job.ranks[min(job.ranks)]
            console = Console(file=io.StringIO(), width=100, color_system=None)
            console.print(Summary(report, SummaryOptions(), job.ranks))

        def tab_path() -> None:
            MemwallPlugin(SimpleNamespace(logdir=str(run.parent))).ranks_impl({"run": "job"})

        def load_only() -> None:
            cli.load_jobs(run)

        print(f"{args.ranks:,} rank reports of {source.stat().st_size / 1e3:.0f} kB each, best / median of {args.runs}")
        for name, fn in (("CLI: load every rank", load_only), ("CLI: load and print the summary", cli_path),
                         ("tab: /ranks, cold", tab_path)):
            times = timed(fn, args.runs)
            print(f"  {name:<34} {min(times):6.2f} s / {statistics.median(times):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
