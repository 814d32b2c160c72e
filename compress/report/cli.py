"""`compfair-report RESULTS_DIR... --out REPORT_DIR`: build the report (`compress.report.build`), write it, and
end with the path of report.html and five lines of what it found (`compress.report.findings`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress.report import significance
from compress.report.build import build_report
from compress.report.findings import summary_lines
from compress.report.writing import write_report


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected MODEL=BASELINE, got {text!r}")
    model, baseline = text.split("=", 1)
    return model.strip(), baseline.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compfair-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR",
                        help="lm-eval --output_path directories (searched recursively for results_*.json)")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="where the report is written")
    parser.add_argument("--compare", type=_pair, action="append", default=[], metavar="MODEL=BASELINE",
                        help="also test MODEL against BASELINE (names as in the report); repeatable")
    parser.add_argument("--distilled", action="append", default=[], metavar="MODEL",
                        help="MODEL was distilled elsewhere (e.g. distilgpt2): not a reference in the perplexity-"
                             "matched comparison; repeatable")
    parser.add_argument("--reference", action="append", default=[], metavar="MODEL",
                        help="fit the perplexity-matched line on these models, for every model (default: each "
                             "lineage's non-distilled models); repeatable")
    parser.add_argument("--mix-families", action="store_true",
                        help="also correlate size with each metric over all models together, whatever model each "
                             "was made from (default: within each lineage)")
    parser.add_argument("--correction", choices=sorted(significance.CORRECTIONS), default="bh",
                        help="multiple-comparison correction: bh = Benjamini-Hochberg (default), holm = Holm")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after correction")
    parser.add_argument("--resamples", type=int, default=None,
                        help=f"bootstrap and permutation resamples (default {significance.DEFAULT_RESAMPLES}; "
                             f"{significance.RECORD_RESAMPLES} for per-record metrics such as StereoSet's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the figures (PNG and PDF)")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.resamples is not None and args.resamples < 1:
        parser.error(f"--resamples must be positive, got {args.resamples}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = build_report(args.results_dirs, dict(args.compare), args.correction, args.alpha, args.resamples,
                          args.seed, args.distilled, args.reference or None, args.mix_families)
    written = write_report(report, args.out, make_plots=not args.no_plots)
    out = Path(args.out).resolve()
    figures = sum(1 for p in written if p.suffix == ".png")
    print("\n".join(summary_lines(report, out / "report.html", out, figures)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
