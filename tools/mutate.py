"""Mutation testing of capnet's core modules with mutmut (`make mutate`; slow, so not part of `make test`).

Each module is mutated in its own scratch copy (.mutate/<module>/) whose pyproject names that module and
only its own tests, which keeps a run tractable. Per module the outcome goes to mutation/<module>.json, and
mutation/results.md is rebuilt from every JSON present: counts, the score, each surviving mutant's diff.
Survivors that cannot change behaviour are listed with the reason in mutation/equivalent.toml; the score
is killed / (mutants - equivalent), where timeouts count as killed (a test hung instead of passing).
`--budget MINUTES` stops a module's run then and records it as partial (scored over the mutants checked);
`--recheck` reruns what the scratch copy's last run did not kill: survivors, and mutants left unchecked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutate"
OUT = ROOT / "mutation"
EQUIVALENT = OUT / "equivalent.toml"
README = ROOT / "README.md"
README_START = "<!-- mutation: start (written by tools/mutate.py from mutation/*.json; do not edit) -->"
README_END = "<!-- mutation: end -->"
MUTMUT = Path(sys.executable).with_name("mutmut")
LTSPLITS = Path(os.environ.get("CAPNET_LTSPLITS") or ROOT.parent / "shared" / "ltsplits")

# module -> the tests that exercise it (pytest arguments)
MODULES: dict[str, list[str]] = {
    "capnet/losses.py": ["tests/test_losses.py"],
    "capnet/metrics.py": ["tests/test_metrics.py"],
    "capnet/graph.py": ["tests/test_graph.py"],
    "capnet/gcn.py": ["tests/test_gcn.py"],
    "capnet/prompts.py": ["tests/test_prompts.py", "tests/test_class_sampling.py"],  # class_chunk, subsets
    "capnet/text.py": [  # its own tests, and template ensembling as test_tta checks it
        "tests/test_text.py",
        "tests/test_tta.py::test_template_features_match_open_clip_encode_text",
        "tests/test_tta.py::test_resolve_templates",
    ],
    "capnet/images.py": [  # with the app's limit at its threshold and the reduced decoding
        "tests/test_images.py",
        "tests/test_app_limits.py::test_forty_megapixels_accepted_one_row_more_refused",
        "tests/test_app_limits.py::test_large_images_are_reduced_while_decoding_to_what_the_model_needs",
        "tests/test_app_limits.py::test_exif_rotation_survives_the_reduction",
    ],
    "capnet/checkpoint.py": ["tests/test_checkpoint.py"],
    # the state file on its own (the end-to-end resumed runs in test_engine.py take minutes per mutant)
    "capnet/engine/state.py": ["tests/test_training_state.py"],
}
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
COPIED = ["capnet", "app", "tests", "configs", "checkpoints"]  # app: the limits tests drive app.predict


def module_key(module: str) -> str:
    return module.removeprefix("capnet/").removesuffix(".py").replace("/", ".")


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh scratch project whose mutmut config names this module and its tests only."""
    work = SCRATCH / module_key(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = {
        "source_paths": ["capnet"],
        "only_mutate": [module],
        "also_copy": ["app", "configs", "checkpoints"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        "pytest_add_cli_args_test_selection": tests,
        # torch is not fork-safe once its thread pool has run: fork workers from a clean server.
        "process_isolation": "forkserver",
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")
    return work


def _env(work: Path) -> dict[str, str]:
    # The copied tests look for the official split files beside the scratch copy: point them at ours.
    return {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "CAPNET_LTSPLITS": str(LTSPLITS)}


def mutmut(work: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(MUTMUT), *args], cwd=work, env=_env(work), text=True, **kwargs)


# One process prints every survivor's diff (a `mutmut show` each costs a whole interpreter start).
SHOW = """import sys
from mutmut.__main__ import cli
for name in sys.argv[1:]:
    print("\\0" + name, flush=True)
    cli.main(["show", name], standalone_mode=False)
"""


def show(work: Path, names: list[str]) -> dict[str, str]:
    """Mutant name -> its diff."""
    if not names:
        return {}
    out = subprocess.run(
        [sys.executable, "-c", SHOW, *names],
        cwd=work,
        env=_env(work),
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    diffs = {}
    for part in out.split("\0")[1:]:
        name, _, rest = part.partition("\n")
        diffs[name] = rest.split("\n", 1)[1].strip()  # after the "# name: status" line
    return diffs


def run_mutmut(work: Path, args: list[str], log: Path, budget: float | None) -> bool:
    """``mutmut run``; with ``budget`` (seconds), stopped when it runs out. True when it finished.

    Each mutant's result is saved as it comes, so a stopped run keeps what it checked ("not checked" for
    the rest), and a later --recheck continues with those.
    """
    with log.open("a") as out:
        proc = subprocess.Popen(
            [str(MUTMUT), "run", *args],
            cwd=work,
            env=_env(work),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers share its process group: stopped together
        )
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return False
    if code:
        raise subprocess.CalledProcessError(code, ["mutmut", "run", *args])
    return True


def statuses(work: Path) -> dict[str, str]:
    listing = mutmut(work, "results", "--all", "true", capture_output=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.M))


def run_module(
    module: str, tests: list[str], max_children: int, recheck: bool = False, budget: float | None = None
) -> dict:
    """All mutants of a fresh copy; or, with ``recheck``, only those of the scratch copy's last run that
    were not killed (survivors and any left unchecked), against the current tests (mutmut finds the new
    tests and maps them to the functions they call)."""
    work = SCRATCH / module_key(module)
    seconds_file = work / "first-run-seconds"
    if not recheck or not (work / "mutants").is_dir():
        work = prepare(module, tests)
        names = []
    else:
        shutil.rmtree(work / "tests")
        shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        names = [n for n, state in statuses(work).items() if state not in KILLED]
    start = time.monotonic()
    finished = run_mutmut(
        work, ["--max-children", str(max_children), *names], work / "mutmut-run.log", budget
    )
    if not names:
        seconds_file.write_text(str(round(time.monotonic() - start)))
    status = statuses(work)
    survivors = [n for n, state in status.items() if state not in KILLED | {"not checked"}]
    diffs = show(work, survivors)
    return {
        "module": module,
        "tests": tests,
        "seconds": int(seconds_file.read_text())
        if seconds_file.is_file()
        else round(time.monotonic() - start),
        "finished": finished,
        "mutants": len(status),
        "counts": {s: list(status.values()).count(s) for s in sorted(set(status.values()))},
        "survivors": {n: {"status": status[n], "diff": diffs[n]} for n in survivors},
    }


def load_equivalent() -> dict[str, str]:
    """Mutant name -> why it cannot change behaviour."""
    if not EQUIVALENT.is_file():
        return {}
    data = tomllib.loads(EQUIVALENT.read_text())
    return {name: reason for table in data.values() for name, reason in table.items()}


def score(result: dict, equivalent: dict[str, str]) -> dict:
    killed = sum(n for s, n in result["counts"].items() if s in KILLED)
    equal = [n for n in result["survivors"] if n in equivalent]
    live = [n for n in result["survivors"] if n not in equivalent]
    checked = result["mutants"] - result["counts"].get("not checked", 0)
    relevant = checked - len(equal)
    return {
        "checked": checked,
        "killed": killed,
        "equivalent": len(equal),
        "live": live,
        "score": killed / relevant if relevant else (1.0 if checked else None),  # None: nothing checked
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def report(equivalent: dict[str, str]) -> str:
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    done = {r["module"] for r in results}
    lines = [
        "# Mutation testing",
        "",
        "Written by `make mutate` (`python tools/mutate.py`, mutmut); each module runs against its own",
        "tests. Score = killed (timeouts included) / (mutants - equivalent survivors listed in",
        "`equivalent.toml`); a run stopped at its time budget (`--budget`) is scored over the mutants it",
        "checked and marked partial.",
        "",
        "| module | tests | mutants | killed | timeout | survived | no tests | equivalent | score | min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    total_killed = total_relevant = 0
    for r in results:
        s = score(r, equivalent)
        c = r["counts"]
        total_killed += s["killed"]
        total_relevant += s["checked"] - s["equivalent"]
        lines.append(
            f"| {r['module']} | {' '.join(r['tests'])} | {r['mutants']} | {c.get('killed', 0)} | "
            f"{c.get('timeout', 0)} | {c.get('survived', 0)} | {c.get('no tests', 0)} | {s['equivalent']} | "
            f"{percent(s['score'])} | {r['seconds'] / 60:.0f} |"
        )
    if total_relevant:
        lines.append(f"| all | | | | | | | | {100 * total_killed / total_relevant:.1f} % | |")
    lines += partial_notes(results, equivalent)
    missing = [m for m in MODULES if m not in done]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    for title, keep in (("Surviving mutants", False), ("Equivalent survivors", True)):
        lines += ["", f"## {title}", ""]
        for r in results:
            for name, info in r["survivors"].items():
                if (name in equivalent) != keep:
                    continue
                reason = f" Equivalent: {equivalent[name]}" if keep else ""
                lines += [f"`{name}` ({info['status']}).{reason}", "", "```diff", info["diff"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def partial_notes(results: list[dict], equivalent: dict[str, str]) -> list[str]:
    """One line per module whose run was stopped at its time budget."""
    notes = [
        f"`{r['module']}`: partial, {score(r, equivalent)['checked']} of {r['mutants']} mutants checked "
        "(the score is over those)."
        for r in results
        if score(r, equivalent)["checked"] < r["mutants"]
    ]
    return ["", *notes] if notes else []


def readme_block(equivalent: dict[str, str]) -> str:
    """The README's summary: per module, mutants, behaviour-changing ones killed, and the score."""
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    lines = [README_START, "| module | mutants | equivalent | killed | score |", "|---|---|---|---|---|"]
    for r in results:
        s = score(r, equivalent)
        counts = f"{r['mutants']} | {s['equivalent']} | {s['killed']}"
        lines.append(f"| `{r['module']}` | {counts} | {percent(s['score'])} |")
    lines += partial_notes(results, equivalent)
    missing = [f"`{m}`" for m in MODULES if m not in {r["module"] for r in results}]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing) + "."]
    return "\n".join([*lines, README_END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to run (default: all), e.g. losses engine.state")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md from the JSON files")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="rerun only what the last run did not kill (survivors, unchecked) against the current tests",
    )
    parser.add_argument(
        "--budget", type=float, help="minutes per module; a run stopped then is recorded as partial"
    )
    args = parser.parse_args(argv)
    by_key = {module_key(m): m for m in MODULES}
    unknown = [m for m in args.modules if m not in by_key]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {sorted(by_key)}")
    OUT.mkdir(exist_ok=True)
    if not args.report_only:
        for key in args.modules or list(by_key):
            module = by_key[key]
            print(f"mutating {module} against {' '.join(MODULES[module])}", flush=True)
            budget = 60 * args.budget if args.budget else None
            result = run_module(module, MODULES[module], args.max_children, args.recheck, budget)
            (OUT / f"{key}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    equivalent = load_equivalent()
    (OUT / "results.md").write_text(report(equivalent))
    readme = README.read_text()
    if README_START in readme and README_END in readme:
        head, rest = readme.split(README_START, 1)
        README.write_text(head + readme_block(equivalent) + rest.split(README_END, 1)[1])
    print((OUT / "results.md").read_text().split("\n## ")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
