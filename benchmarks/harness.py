"""What every benchmark shares: the run settings, interleaved timing and the tables.

Timings on a shared machine drift by tens of percent within minutes, so a
benchmark never reports an absolute time on its own: it runs the contenders
in turn within each repeat (A B, then B A, then A B, ...), takes the ratio
inside each repeat, where both saw the same conditions, and reports the
median ratio with its spread.
"""

import dataclasses
import os
import statistics
import time

import torch


@dataclasses.dataclass
class Settings:
    """What the command line chose; every benchmark's ``run`` receives it."""

    device: str = "cpu"
    quick: bool = False
    threads: int = 1  # torch CPU threads, for benchmarks that start processes


@dataclasses.dataclass
class Table:
    """One result: a title, a header, rows, and notes printed under it."""

    title: str
    columns: list
    rows: list
    notes: list = dataclasses.field(default_factory=list)

    def to_markdown(self):
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        if self.notes:
            # A blank line between notes keeps each its own Markdown paragraph.
            lines.append("")
            lines.append("\n\n".join(self.notes))
        return "\n".join(lines)


def cpu_flags():
    """``(CPU model, set of ISA flags)`` from /proc/cpuinfo (``("unknown CPU", set())`` elsewhere)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_line():
    """The CPU model, cores, torch threads and the vector ISA flags that decide bf16 and
    int8 speed: figures from a CPU with other flags do not carry over."""
    model, flags = cpu_flags()
    isa = sorted(f for f in flags if f in ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni")
                 or f.startswith(("avx512", "amx")))
    missing = [name for name, prefix in (("AVX-512", "avx512"), ("AMX", "amx"))
               if not any(f.startswith(prefix) for f in flags)]
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.get_num_threads()} "
            f"thread(s); ISA flags: {' '.join(isa) or 'none read'}"
            + (f" (no {' or '.join(missing)})" if missing else ""))


def _cell(value):
    if isinstance(value, float):
        return f"{value:#.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def synchronize(device):
    """Wait for queued GPU work, so that a timer measures the work itself."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(contenders, repeats, device="cpu", settle=0.0):
    """Time each contender ``repeats`` times, alternating their order.

    Parameters
    ----------
    contenders : dict of name -> callable
        Zero-argument callables doing the whole measured job once.
    repeats : int
    device : str
        Synchronized before and after each call.
    settle : float, default=0
        Seconds to wait, untimed, before each call: ONNX Runtime's threads
        spin for a while after a run, and would slow whichever contender
        runs next on a small machine.

    Returns
    -------
    wall, cpu : dict of name -> list of float
        Wall-clock and process CPU seconds (all threads) per call, in repeat
        order: entry ``i`` of every list comes from the same repeat. On a
        shared machine the CPU time is the steadier measure of the work
        done, as it leaves out the time other processes held the cores.
    """
    names = list(contenders)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        # Reversing every other repeat cancels any advantage of going first
        # (warm caches) or second (CPU clocks already up).
        for name in (names if r % 2 == 0 else names[::-1]):
            if settle:
                time.sleep(settle)
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def ratio_summary(numerator, denominator):
    """Median and range of the per-repeat ratios ``numerator[i] / denominator[i]``."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(ratios), max(ratios)


def spread(ratios):
    """``"lo-hi"`` for a (median, lo, hi) triple, as printed in the tables."""
    _, lo, hi = ratios
    return f"{lo:.3f}-{hi:.3f}"


def comparison_table(title, unit, n, wall, cpu, device, notes):
    """The table of a two-contender throughput benchmark.

    ``wall`` and ``cpu`` come from :func:`interleaved`, with the baseline
    first and sktransfer second; ``n`` items are processed per call. The
    throughput shown is each contender's best call, the one other work
    disturbed least. Ratios are sktransfer's throughput over the baseline's
    within each repeat, so above 1 is faster. CPU-time ratios are left out
    on accelerators, where the host mostly waits.
    """
    baseline, contender = list(wall)
    on_cpu = torch.device(device).type == "cpu"
    columns = ["contender", f"{unit}/s (best)", "ratio (median)", "ratio range"]
    if on_cpu:
        columns += ["CPU-time ratio (median)", "CPU-time ratio range"]
    rows = []
    for name in (baseline, contender):
        row = [name, n / min(wall[name])]
        if name == baseline:
            row += [1.0, "-"] + ([1.0, "-"] if on_cpu else [])
        else:
            ratios = ratio_summary(wall[baseline], wall[name])
            row += [ratios[0], spread(ratios)]
            if on_cpu:
                ratios = ratio_summary(cpu[baseline], cpu[name])
                row += [ratios[0], spread(ratios)]
        rows.append(row)
    return Table(title=title, columns=columns, rows=rows, notes=notes)
