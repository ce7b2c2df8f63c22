"""``python -m moda_lab.analysis sweep_dir=<dir> out=<dir> [key=value ...]``: write all figures, tables, report.

Keys:
  sweep_dir=DIR        run dirs of one experiment (<run_root>/<experiment>/), or an archive of them
                       (<name>.tar.xz beside its <name>.sha256: moda_lab.analysis.archive), checked and read as is
  out=DIR              output dir (default: <sweep_dir>/analysis; for <dir>/<name>.tar.xz, <dir>/<name>_analysis)
  wandb=ENTITY/PROJECT also pull online runs (full histories via scan_history, cached as parquet)
  wandb_offline=DIR    also read offline wandb runs under DIR (offline-run-* folders)
  cache=DIR            parquet cache for online runs (default: <out>/wandb_cache)
  refresh=true         re-download cached online runs
  bench=DIR            also plot the kernel benchmark results in DIR (e.g. experiments/bench/results); off by default
  seed_std_target=X    seed-spread target of a cell's final val loss, nats (default 0.01)
  min_drop=X           a run whose val loss fell less than X nats over its second half did not train (default 0.05)
  reference=MODULE     the published result the report compares with (moda_lab.analysis.reference): MODULE's
                       REFERENCE or MODULE:NAME (default moda_paper: the paper's Table 6); none: no comparison
  untested=ARMS        (moda_paper) arms the setup could not test (e.g. an under-tuned lr), comma-separated NORM or
                       NORM/VARIANT, either with @LR for the arms at that peak lr only (untested="post/moda +ffn_kv",
                       untested=post@3.75e-4): their Table 6 orderings are "untested"; a reference's own keys are
                       allowed beside these
  pdf=true             write each figure as PDF too (default: PNG only)
  ckpt=PATH text=STR [tokenizer=PATH]   attention inspection of one checkpoint on one text

A bad argument, a sweep_dir that does not exist, sources without any run or an out= where no folder can be made (a
file, a path below a file, a read-only folder) print one line and exit with status 2, writing nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib

from moda_lab.analysis.reference import Reference, load_reference
from moda_lab.errors import UsageError, exit_on_usage_error

KEYS = {"sweep_dir", "out", "wandb", "wandb_offline", "cache", "refresh", "bench", "ckpt", "text", "tokenizer"}
KEYS |= {"reference", "pdf"}
# The reference the report compares with unless reference= names another (or none): found by module name, so
# that this package imports nothing of it.
DEFAULT_REFERENCE = "moda_paper"
# Numeric keys, with the range each allows.
FLOAT_KEYS = {"seed_std_target": (lambda x: x > 0, "> 0"), "min_drop": (lambda x: x >= 0, ">= 0")}
KEYS |= set(FLOAT_KEYS)


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` pairs; unknown keys (beyond KEYS and the reference's options) and bare words raise
    UsageError naming them, and so does a value the reference does not allow."""
    pairs = [(item, *item.partition("=")) for item in argv]
    named = [value for _, key, sep, value in pairs if sep and key.lstrip("-") == "reference"]
    reference = load_reference(named[-1] if named else DEFAULT_REFERENCE)
    keys = KEYS | set(reference.options if reference else ())
    args: dict[str, str] = {}
    for item, key, sep, value in pairs:
        key = key.lstrip("-")
        if not sep or key not in keys:
            raise UsageError(f"bad argument {item!r}; expected key=value with key in {sorted(keys)}")
        args[key] = value
    if "sweep_dir" not in args and "wandb" not in args and "wandb_offline" not in args and "ckpt" not in args:
        raise UsageError("give at least one of sweep_dir=, wandb=, wandb_offline=, ckpt=")
    if "ckpt" in args and "text" not in args:
        raise UsageError("ckpt= needs text=")
    for key in FLOAT_KEYS.keys() & args.keys():
        allowed, text = FLOAT_KEYS[key]
        try:
            ok = allowed(float(args[key]))
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{key}={args[key]!r} is out of range; allowed: a number {text}")
    reference_of(args)  # a value the reference does not allow: its one line, before anything is written
    return args


def reference_of(args: dict[str, str]) -> Reference | None:
    """The reference ``reference=`` names (DEFAULT_REFERENCE without it), configured with its own keys of ``args``;
    its UsageError names a value it does not allow."""
    reference = load_reference(args.get("reference", DEFAULT_REFERENCE))
    return reference.configure({k: v for k, v in args.items() if k in reference.options}) if reference else None


def main(argv: list[str] | None = None) -> int:
    """Run the analysis the arguments ask for; returns 0. A usage error prints one line and exits with status 2."""
    matplotlib.use("Agg")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_usage_error("moda_lab.analysis"):
        args = parse_args(sys.argv[1:] if argv is None else argv)
        from moda_lab.analysis.plots import figure_formats

        with figure_formats(("png", "pdf") if args.get("pdf", "false").lower() in ("1", "true", "yes") else ("png",)):
            return analyse(args)


def default_out(sweep: str) -> Path:
    """``<sweep_dir>/analysis``; for an archive ``<dir>/<name>.tar.xz``, ``<dir>/<name>_analysis``."""
    from moda_lab.analysis.archive import archive_name, is_archive

    return Path(sweep).with_name(archive_name(sweep) + "_analysis") if is_archive(sweep) else Path(sweep) / "analysis"


def analyse(args: dict[str, str]) -> int:
    """Write the sweep analysis and/or the attention inspection the parsed arguments ask for; list what was written."""
    from moda_lab.analysis.attention import inspect_checkpoint, save_inspection
    from moda_lab.analysis.pipeline import check_out_dir, run_analysis

    sweep = args.get("sweep_dir")
    out = Path(args.get("out") or (default_out(sweep) if sweep else "analysis_out"))
    bench = args.get("bench") or None
    if args.get("out") or not sweep:  # refused before any run or checkpoint is read (sweep_dir/analysis: once it is)
        check_out_dir(out)
    written: list[Path] = []
    if sweep or "wandb" in args or "wandb_offline" in args:
        analysis = run_analysis(
            sweep,
            out,
            wandb_project=args.get("wandb"),
            wandb_offline=args.get("wandb_offline"),
            bench_dir=bench,
            cache_dir=args.get("cache"),
            refresh=args.get("refresh", "false").lower() in ("1", "true", "yes"),
            reference=reference_of(args),
            **{key: float(args[key]) for key in FLOAT_KEYS.keys() & args.keys()},
        )
        written += analysis.written
        n_complete = int(analysis.summary["complete"].sum()) if "complete" in analysis.summary else 0
        print(f"{len(analysis.records)} runs loaded, {n_complete} complete; {len(analysis.issues)} issues:")
        for issue in analysis.issues:
            print(f"  ! {issue.as_line()}")
    if "ckpt" in args:
        inspection = inspect_checkpoint(args["ckpt"], args["text"], args.get("tokenizer"))
        written += save_inspection(inspection, out / "attention")
    print(f"wrote {len(written)} files under {out}:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
