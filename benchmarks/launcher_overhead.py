"""Wall time of one 4-run sweep under each ``da bench --launcher`` (issue 19's target: on a
2-core machine ``--launcher ray`` is no slower than ``local`` by more than Ray's start-up).

Every configuration runs ``da bench`` as a fresh process into a fresh results folder, so
each pays its own imports, compiles and (for Ray) cluster start; the order is interleaved
over ``--repeats`` rounds.  The records of every launcher are checked equal to local's
(config, metrics, history), so the timings compare the same work.

    PYTHONPATH=$PWD python benchmarks/launcher_overhead.py --steps 300 --repeats 2 --compile-cache cold \
        --json benchmarks/results/launchers/amd_epyc_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "local": [],
    "multi-device --workers 2": ["--launcher", "multi-device", "--workers", "2"],
    "ray --cpus-per-run 1": ["--launcher", "ray", "--cpus-per-run", "1"],
    "ray --cpus-per-run 2": ["--launcher", "ray", "--cpus-per-run", "2"],
}


RAY_START = ("import time, ray; t = time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False); "
             "ray.get(ray.remote(lambda: 1).remote()); print(time.perf_counter() - t)")


def sweep(steps: int) -> dict:
    """Four runs: source_only and DANN x seeds 0, 1 on the embedded digits shift, LeNet."""
    return {"name": "launchers", "base": {"steps": steps, "batch_size": 32, "log_every": 100},
            "methods": ["source_only", "dann"], "pairs": [("digits/source", "digits/rotate")], "seeds": [0, 1]}


def records(root: Path) -> dict[str, tuple]:
    """``{relative path: (config, metrics, history)}`` of every record under ``root``."""
    out = {}
    for p in sorted(root.rglob("seed*.json")):
        r = json.loads(p.read_text())
        out[str(p.relative_to(root))] = (r["config"], r["metrics"], r["history"])
    return out


def main() -> None:
    """Runs the configurations, prints a table, optionally writes every timing as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--compile-cache", choices=["cold", "off"], default="cold",
                    help="cold: each da bench process starts with an empty persistent compilation cache of its own "
                         "(reused by its later runs and its workers); off: DA_COMPILE_CACHE=off (no reuse at all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.configs.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        sweep_file = Path(tmp) / "launchers.py"
        sweep_file.write_text(f"def get_sweep():\n    return {sweep(args.steps)!r}\n")
        for rep in range(args.repeats):
            for name in names if rep % 2 == 0 else names[::-1]:
                out = Path(tmp) / f"{name.replace(' ', '_')}_{rep}"
                cmd = [sys.executable, "-m", "da_framework.cli", "bench", str(sweep_file), "--results-dir", str(out), *CONFIGS[name]]
                start = time.perf_counter()
                cache = str(Path(tmp) / f"cache_{out.name}") if args.compile_cache == "cold" else "off"
                done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "DA_COMPILE_CACHE": cache})
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"{name}: da bench failed:\n{done.stdout}\n{done.stderr}")
                got = records(out)
                if len(got) != 4:
                    sys.exit(f"{name}: {len(got)} records, expected 4")
                reference = reference or got
                same = got == reference
                times[name].append(wall)
                print(f"round {rep} {name:28s} {wall:7.1f} s  records equal local's: {same}", flush=True)
                if not same:
                    sys.exit(f"{name}: records differ from the first configuration's")
    ray_start = subprocess.run([sys.executable, "-c", RAY_START], check=False, capture_output=True, text=True).stdout.strip().splitlines()
    ray_start_s = float(ray_start[-1]) if ray_start else float("nan")
    print(f"ray.init() of a local 2-CPU cluster, alone: {ray_start_s:.1f} s")
    head = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load before "
            f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; {args.steps} steps x 4 runs; "
            f"compile cache {args.compile_cache}")
    print(head)
    print("| launcher | wall s (each round) | median |\n|---|---|---|")
    for n in names:
        ts = sorted(times[n])
        print(f"| {n} | {', '.join(f'{t:.1f}' for t in times[n])} | {ts[len(ts) // 2]:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": head, "steps": args.steps, "wall_s": times, "ray_start_s": ray_start_s, "compile_cache": args.compile_cache,
                                         "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
