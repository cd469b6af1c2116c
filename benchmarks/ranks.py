"""How long do the ranks of a large job take to load? A job of N ranks made from a real 2-rank run.

    python benchmarks/ranks.py [--ranks 512 1024] [--runs 3] [--from runs/ddp]

Runs the DDP sample on two ranks under torchrun (gloo, this CPU) unless `--from` names a run
directory of it, copies its rank 1 report to ranks 0..N-1 (8 ranks per node, one straggler
with every op 1.5x slower: `tests/torchrun_job.py`'s `replicate_ranks`), then times, cold
(a fresh process or a fresh plugin each run, the files in the page cache):

* `memwall report LOGDIR` as a user runs it, a fresh process (its imports included) printing
  the job view: the first read of a job whose ranks left their heads when they saved (as a
  torch.distributed job under memwall does), the first read of copies without them (every
  report read and checked in full; the ranks' heads then cached beside them,
  `memwall_plugin/rankheads.py`) and a later one (the heads read from that cache, the shown
  rank's report in full);
* the tab's `/ranks`: a fresh plugin's `ranks_impl` (scan, heads, spread), first read and later.

Prints the best and the median of `--runs` runs of each. Not a test: the figures depend on the
machine; the tests check what the views show, this says how long they take.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memwall_plugin.tb_plugin.plugin import MemwallPlugin  # noqa: E402
from torchrun_job import SAMPLE, replicate_ranks, torchrun  # noqa: E402

from memwall_plugin.rankheads import HEADS_DIR, SIDECAR  # noqa: E402


def real_run(where: Path) -> Path:
    result = torchrun("-m", "memwall_plugin.cli", "run", "--logdir", "runs/ddp", str(SAMPLE), "--no-profile",
                      "--steps", "3", "--width", "64", "--depth", "2", cwd=where)
    if result.returncode != 0:
        sys.exit(f"the 2-rank run failed:\n{result.stderr[-3000:]}")
    return where / "runs" / "ddp"


def timed(fn: Callable[[], object], runs: int, before: Callable[[], object] = lambda: None) -> list[float]:
    out = []
    for _ in range(runs):
        before()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--from", dest="source", type=Path, help="a run directory of a 2-rank DDP run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        source_run = args.source or real_run(base)
        (source,) = (source_run / "plugins" / "memwall").glob("rank1_*.json")
        print(f"rank reports of {source.stat().st_size / 1e3:.0f} kB each; best / median of {args.runs} "
              "(first read: no sidecar yet; later: the sidecar the first read wrote)")
        for ranks in args.ranks:
            run = base / f"logdir{ranks}" / "job"
            folder = replicate_ranks(source, run, ranks, straggler=ranks // 2 + 1, heads=True)
            sidecar = folder / SIDECAR
            left = folder / HEADS_DIR
            put_aside = folder.parent / "heads-aside"

            def forget(sidecar: Path = sidecar) -> None:
                sidecar.unlink(missing_ok=True)

            def forget_all(sidecar: Path = sidecar, left: Path = left, put_aside: Path = put_aside) -> None:
                sidecar.unlink(missing_ok=True)
                if left.exists():
                    left.rename(put_aside)

            def restore(left: Path = left, put_aside: Path = put_aside) -> None:
                if put_aside.exists():
                    put_aside.rename(left)

            def cli(run: Path = run) -> None:
                subprocess.run([sys.executable, "-m", "memwall_plugin.cli", "report", str(run)], check=True,
                               capture_output=True)

            def tab(run: Path = run) -> None:
                MemwallPlugin(SimpleNamespace(logdir=str(run.parent))).ranks_impl({"run": "job"})

            for name, fn in (("CLI: memwall report, a fresh process", cli), ("tab: /ranks, a fresh plugin", tab)):
                for when, before in (("first read, heads the ranks left", forget),
                                     ("first read, copies without heads", forget_all), ("later", restore)):
                    times = timed(fn, args.runs, before)
                    restore()
                    print(f"  {ranks:>5,} ranks  {name:<38} {when:<33} {min(times):6.2f} s / "
                          f"{statistics.median(times):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
