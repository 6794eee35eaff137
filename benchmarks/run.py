"""Run sktransfer's benchmarks and print their tables, with the machine they ran on.

    python benchmarks/run.py [--quick] [--only NAME ...] [--device cpu|cuda]
                            [--threads N] [--output FILE]

Each benchmark is a module ``bench_<name>.py`` beside this file with a
``run(settings)`` function returning a list of :class:`harness.Table`; add
its name to ``BENCHMARKS`` to include it. The output is Markdown, ready to
paste into ``RESULTS.md``.
"""

import argparse
import datetime
import importlib
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from harness import Settings  # noqa: E402

#: Benchmark names, run in this order; ``bench_<name>.py`` holds each.
BENCHMARKS = ("transform", "hf_image", "text", "engine", "memory", "finetune", "cache",
              "save_load", "ranking", "distributed", "dask", "adaptation", "checkpointing",
              "adapters", "adapter_quality", "openvino", "export_onnx")


def machine_description(device):
    """The lines that say what the figures were measured on."""
    import sklearn
    import torchvision

    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores visible, torch uses "
        f"{threads} thread{'s' if threads != 1 else ''}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, scikit-learn {sklearn.__version__}",
        f"- OS: {platform.platform()}",
    ]
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"- Device: {device}, {props.name}, "
                     f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        lines.append(f"- Device: {device}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats, to check that everything runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to run on (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's own choice); 1 gives "
                             "steadier ratios on a machine other work is loading")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the report to FILE")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings(device=args.device, quick=args.quick, threads=torch.get_num_threads())
    # The command that reproduces the figures (where the report goes does not matter).
    command = ["python benchmarks/run.py"]
    if args.quick:
        command.append("--quick")
    if args.only:
        command.append("--only " + " ".join(args.only))
    if args.threads is not None:
        command.append(f"--threads {args.threads}")
    command.append(f"--device {args.device}")
    header = [
        "## sktransfer benchmarks",
        "",
        f"`{' '.join(command)}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        *machine_description(args.device),
    ]
    report = ["\n".join(header)]
    print(report[0], flush=True)
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"bench_{name}")
        start = time.perf_counter()
        for table in module.run(settings):
            report.append(table.to_markdown())
            print("\n" + report[-1], flush=True)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write("\n\n".join(report) + "\n")


if __name__ == "__main__":
    main()
