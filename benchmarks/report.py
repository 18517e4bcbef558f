"""Ratio tables from a pytest-benchmark JSON of the fastlista suites.

Usage::

    pytest benchmarks --benchmark-only --benchmark-json=out.json
    python benchmarks/report.py out.json            # plain text
    python benchmarks/report.py out.json --markdown # for docs/benchmarks.md

Within each benchmark group, every entry whose ``extra_info["role"]`` is
``"ours"`` is compared with every entry whose role is ``"reference"``:

* time ratio = median(ours) / median(reference), each median first divided by
  the entry's ``extra_info["calls_per_round"]`` (iterations per call);
* when two "ours" entries share a ``label`` but differ in ``calls_per_round``
  (k1 < k2 iterations per call), a "marginal" row also gives the cost of one
  more iteration, (median_k2 - median_k1) / (k2 - k1), which excludes the
  per-call overhead (validation, c = X D^T, the final gap);
* a reference may carry ``target_ratio`` (the largest acceptable time ratio;
  with ``target_rows="marginal"`` it applies to the marginal rows only, the
  per-call rows being shown without a target) and ``compare``:
  ``{metric: {"kind": "ratio" | "rel_diff" | "abs_rel_diff" | "value",
  "max": value}}`` to compare numbers stored in both entries' ``extra_info``:
  ``"rel_diff"`` is one-sided, (ours - reference) / |reference| (the mean
  objective "no worse than the reference"), ``"abs_rel_diff"`` its absolute
  value (two results that must agree, such as a loss), ``"ratio"`` ours /
  reference (the mean iteration count); ``"value"`` checks a number the
  reference entry measured itself (for example the relative difference of
  its gradients from ours). A compared number that is missing fails.

A time ratio that is not positive (a marginal whose larger k ran faster:
noise) fails its target; an "ours" entry whose group has no reference in
the file (a reference skipped, e.g. without torch) is listed as such.

Only the standard library is used, so the report runs anywhere.
"""
import argparse
import json
import sys

__all__ = ["compute_ratios", "format_table", "load", "main"]


def load(path):
    """Read a pytest-benchmark JSON file and return its list of benchmarks."""
    with open(path) as f:
        data = json.load(f)
    return data["benchmarks"]


def _median(bench):
    stats = bench.get("stats") or {}
    med = stats.get("median")
    if med is None:
        return None
    return med / (bench.get("extra_info", {}).get("calls_per_round") or 1)


def _label(bench):
    return bench.get("extra_info", {}).get("label") or bench.get("name")


def _ours_entries(benches):
    """(label, median per call unit, bench, is_marginal) for ours, plus
    marginal entries."""
    ours = [b for b in benches if b.get("extra_info", {}).get("role") == "ours"]
    def shown(b):
        k = b.get("extra_info", {}).get("calls_per_round") or 1
        return _label(b) if k == 1 else f"{_label(b)} (k={k}, per iteration)"

    out = [(shown(b), _median(b), b, False) for b in ours]
    by_label = {}
    for b in ours:
        by_label.setdefault(_label(b), []).append(b)
    for label, group in by_label.items():
        ks = {b["extra_info"].get("calls_per_round", 1): b for b in group}
        if len(ks) < 2:
            continue
        k1, k2 = min(ks), max(ks)
        m1, m2 = ks[k1]["stats"]["median"], ks[k2]["stats"]["median"]
        marginal = (m2 - m1) / (k2 - k1)
        out.append((f"{label} (marginal {k1}->{k2})", marginal, ks[k2], True))
    return out


def _compare_metric(kind, ours_value, ref_value):
    if kind == "value":
        return ref_value
    if ours_value is None or ref_value is None:
        return None
    if kind == "ratio":
        return ours_value / ref_value if ref_value else float("inf")
    if kind in ("rel_diff", "abs_rel_diff"):
        diff = (ours_value - ref_value) / max(abs(ref_value), 1e-300)
        return abs(diff) if kind == "abs_rel_diff" else diff
    raise ValueError(f"unknown comparison kind {kind!r}")


def compute_ratios(benchmarks):
    """Pair "ours" and "reference" entries of each group.

    Parameters
    ----------
    benchmarks : list of dict
        The ``"benchmarks"`` list of a pytest-benchmark JSON (or
        ``Metadata.as_dict()`` of each benchmark).

    Returns
    -------
    rows : list of dict
        One per (ours, reference) pair in a group, with keys ``group``,
        ``ours``, ``reference``, ``ours_median``, ``reference_median``
        (seconds per unit of work), ``ratio``, ``target_ratio``, ``ok``
        (None without a target) and ``metrics``: a list of dicts with
        ``name``, ``kind``, ``ours``, ``reference``, ``value``, ``max``, ``ok``.
    """
    groups = {}
    for b in benchmarks:
        if not b.get("stats"):
            continue
        groups.setdefault(b.get("group") or "", []).append(b)
    rows = []
    for group in sorted(groups):
        benches = groups[group]
        refs = [b for b in benches if b.get("extra_info", {}).get("role") == "reference"]
        for label, med, ob, marginal in _ours_entries(benches):
            if not refs:
                rows.append(dict(group=group, ours=label,
                                 reference="(no reference in this run)", ours_median=med,
                                 reference_median=None, ratio=None, target_ratio=None,
                                 ok=None, metrics=[]))
            for rb in refs:
                rinfo = rb.get("extra_info", {})
                rmed = _median(rb)
                ratio = med / rmed if (med is not None and rmed) else None
                target = rinfo.get("target_ratio")
                if rinfo.get("target_rows") == "marginal" and not marginal:
                    target = None
                row = dict(group=group, ours=label, reference=_label(rb),
                           ours_median=med, reference_median=rmed, ratio=ratio,
                           target_ratio=target,
                           ok=None if (target is None or ratio is None)
                           else 0 < ratio <= target,
                           metrics=[])
                for name, spec in (rinfo.get("compare") or {}).items():
                    kind = spec.get("kind", "ratio")
                    ov = ob.get("extra_info", {}).get(name)
                    rv = rinfo.get(name)
                    value = _compare_metric(kind, ov, rv)
                    mx = spec.get("max")
                    row["metrics"].append(dict(
                        name=name, kind=kind, ours=ov, reference=rv, value=value, max=mx,
                        ok=None if mx is None else value is not None and value <= mx))
                rows.append(row)
    return rows


def _fmt_time(t):
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def _fmt_num(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_ok(ok):
    return {None: "", True: "ok", False: "MISS"}[ok]


def format_table(rows, markdown=False):
    """Format the rows of :func:`compute_ratios` as a text or Markdown table."""
    header = ["group", "ours", "reference", "ours (median)", "reference (median)",
              "ratio", "target", ""]
    lines = []
    for r in rows:
        lines.append([r["group"], r["ours"], r["reference"], _fmt_time(r["ours_median"]),
                      _fmt_time(r["reference_median"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                      "" if r["target_ratio"] is None else f"<= {r['target_ratio']:.3g}",
                      _fmt_ok(r["ok"])])
        for m in r["metrics"]:
            what = {"ratio": "ratio", "rel_diff": "rel. diff",
                    "abs_rel_diff": "|rel. diff|"}.get(m["kind"], "value")
            lines.append(["", f"  {m['name']}: {_fmt_num(m['ours'])}",
                          f"{_fmt_num(m['reference'])}", "", "",
                          f"{what} {_fmt_num(m['value'])}",
                          "" if m["max"] is None else f"<= {m['max']:.3g}",
                          _fmt_ok(m["ok"])])
    if markdown:
        out = ["| " + " | ".join(header) + " |",
               "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    out += [fmt.format(*line).rstrip() for line in lines]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Print per-group ratios (median of ours / median of reference) "
                    "from a pytest-benchmark JSON of the fastlista suites.")
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s)")
    parser.add_argument("--markdown", action="store_true", help="Markdown table")
    args = parser.parse_args(argv)
    status = 0
    for path in args.json:
        try:
            benches = load(path)
        except (OSError, ValueError, KeyError) as exc:
            print(f"report.py: cannot read {path}: {exc}", file=sys.stderr)
            status = 2
            continue
        rows = compute_ratios(benches)
        if len(args.json) > 1:
            print(f"\n{path}")
        if not rows:
            print(f"no timed 'ours' entries in {path}")
            continue
        print(format_table(rows, markdown=args.markdown))
    return status


if __name__ == "__main__":
    sys.exit(main())
