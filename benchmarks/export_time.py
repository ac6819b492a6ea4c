"""Export + verify wall time and peak memory of dyt-export on one zoo model.

Each repeat runs in a fresh Python process (so peak RSS is that export's alone, imports
included) and the variants are interleaved round by round. Prints a table and writes JSON.

    python benchmarks/export_time.py --arch vit_base --norms layernorm,dyt --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
from dyt_deploy.export import export_onnx
times = {}
result = export_onnx(sys.argv[1], sys.argv[2], samples=int(sys.argv[3]),
                     progress=lambda e, step, s: times.__setitem__(step, s) if e == "done" else None)
print(json.dumps({"wall_s": time.perf_counter() - start, "steps": times, "passed": result.parity.passed,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_once(model_pt: Path, out: Path, samples: int) -> dict:
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model_pt), str(out), str(samples)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base")
    parser.add_argument("--norms", default="layernorm,dyt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("reports/export_time.json"))
    args = parser.parse_args()

    import torch

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.models import create_model

    norms = args.norms.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in norms}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for norm in norms:
            model = create_model(args.arch, norm=norm)
            params = sum(p.numel() for p in model.parameters())
            paths[norm] = save_checkpoint(model, Path(tmp) / f"{norm}.pt")
        for round_ in range(args.repeats):
            for norm in norms:  # interleaved: A B A B ...
                runs[norm].append(run_once(paths[norm], Path(tmp) / f"{norm}.onnx", args.samples))
                print(f"round {round_ + 1} {norm}: {runs[norm][-1]['wall_s']:.1f} s", file=sys.stderr)
    summary = {
        "arch": args.arch, "parameters": params, "repeats": args.repeats, "samples": args.samples,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "variants": {n: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                         "max_wall_s": max(r["wall_s"] for r in rs),
                         "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                         "median_steps_s": {k: statistics.median(r["steps"][k] for r in rs) for k in rs[0]["steps"]},
                         "all_passed": all(r["passed"] for r in rs)} for n, rs in runs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.arch} ({params / 1e6:.1f} M parameters), {args.repeats} runs each, fresh process per run")
    print(f"{'variant':12} {'median s':>9} {'max s':>7} {'peak RSS MiB':>13}  verified")
    for norm, v in summary["variants"].items():
        print(f"{norm:12} {v['median_wall_s']:9.1f} {v['max_wall_s']:7.1f} {v['median_peak_rss_mib']:13.0f}  "
              f"{'yes' if v['all_passed'] else 'NO'}")


if __name__ == "__main__":
    main()
