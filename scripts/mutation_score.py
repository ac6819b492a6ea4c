"""Per-module mutation score from mutmut's results (``make mutation`` prints it after ``mutmut run``).

mutmut keeps one ``mutants/<path>.meta`` JSON file per mutated module, mapping each mutant's name to
the exit code of its test run. This sums them per module: killed (a test failed), timeout (the tests
ran past mutmut's time limit: counted as killed, as mutmut does, but shown apart because a hung
test is a weaker verdict), survived (every test passed), no tests (no selected test reaches the
mutated function) and not checked; then lists the survivors so they can be read with
``mutmut show NAME``. Survivors judged equivalent are listed, with why, in docs/mutation.md.

    python scripts/mutation_score.py [--survivors] [--fail-under PERCENT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit codes (mutmut/stats.py): 1/3 a test failed; 0 every test passed; 5/33 no tests;
# 24/-24/152/255/36 over the time limit (counted as killed, as mutmut does); 34 skipped.
KILLED = {1, 3}
TIMEOUT = {24, -24, 152, 255, 36}
SURVIVED = {0}
NO_TESTS = {5, 33}


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "other"


def module_results(mutants_dir: Path) -> dict[str, dict[str, str]]:
    """``{"dyt_deploy/parity.py": {mutant name: status}}`` for every module mutmut mutated."""
    results = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            results[str(meta.relative_to(mutants_dir))[: -len(".meta")]] = {k: status(v) for k, v in codes.items()}
    return results


def score(counts: Counter) -> float:
    """Killed (timeouts included) share of the mutants that were run (not-checked ones excluded), in percent."""
    tested = sum(counts.values()) - counts["not checked"]
    return 100.0 * (counts["killed"] + counts["timeout"]) / tested if tested else 0.0


def row(label: str, total: int, counts: Counter) -> str:
    return (f"{label:32} {total:6} {counts['killed']:7} {counts['timeout']:8} {counts['survived']:9} "
            f"{counts['no tests']:9} {counts['not checked']:10} {score(counts):6.1f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's work folder")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    parser.add_argument("--fail-under", type=float, default=None, help="exit 1 if a module scores below this")
    args = parser.parse_args()
    results = module_results(args.mutants)
    if not results:
        print(f"no mutmut results under {args.mutants}/; run `make mutation` first", file=sys.stderr)
        return 2
    print(f"{'module':32} {'total':>6} {'killed':>7} {'timeout':>8} {'survived':>9} {'no tests':>9} "
          f"{'unchecked':>10} {'score':>7}")
    low = []
    for module, statuses in results.items():
        counts = Counter(statuses.values())
        print(row(module, len(statuses), counts))
        if args.fail_under is not None and score(counts) < args.fail_under:
            low.append(module)
    total = Counter(s for statuses in results.values() for s in statuses.values())
    print(row("all", sum(total.values()), total))
    if args.survivors:
        for statuses in results.values():
            for name, state in statuses.items():
                if state in ("survived", "no tests", "timeout", "other"):
                    print(f"{state:9} {name}")
    if low:
        print(f"below {args.fail_under}%: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
