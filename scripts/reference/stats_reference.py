#!/usr/bin/env python3
"""Reference values for harness/src/report/stats.rs, from scipy.stats.

Prints the numbers that the unit tests in stats.rs compare with (to 1e-6 or better):
Welch's t-test (ttest_ind, equal_var=False), the paired t-test (ttest_rel) and the Wilcoxon
signed-rank test (wilcoxon, scipy's defaults: zero_method='wilcox', correction=False,
method='auto'). The numbers are committed in the Rust tests, so CI never needs scipy; rerun
this after changing a case and paste its output.

    python scripts/reference/stats_reference.py
"""
import numpy as np
import scipy
from scipy import stats

# (a, b) pairs: accuracies in percent of the same seeds under two methods.
PAIRED = [
    ([75.0, 76.0, 77.5], [70.0, 72.0, 74.0]),
    ([71.2, 70.8, 71.5, 70.9, 71.1], [70.1, 71.0, 69.8, 70.5, 70.7]),
    ([76.1, 75.4, 76.9, 75.8, 76.3, 75.9, 76.6], [75.2, 75.6, 76.0, 75.1, 75.9, 75.0, 76.2]),
]

# Differences for the signed-rank test: no ties (exact), ties (all sign flips, n <= 13), a zero
# (all sign flips), ties at n > 13 (normal approximation with the tie correction), the same with
# zeros, no ties at n <= 50 (exact) and at n > 50 (normal approximation). The long cases are
# formulas that the Rust test evaluates in the same order of floating-point operations.
WILCOXON = [
    [0.9, -0.2, 0.7, 0.5, 1.2, 0.3],
    [0.9, -0.4, 0.9, 1.6, 0.4, 0.3, -1.1],
    [0.5, 0.0, -0.25, 1.5, 0.75, 2.0, -1.0, 1.25],
    [1.0, -2.0, 3.0, 1.0, 2.0, -1.0, 4.0, 5.0, 2.0, 3.0, -3.0, 6.0, 1.0, 7.0, 2.0, 8.0],
    [float((i * 7) % 11 - 4) for i in range(20)],
    [((i * 37) % 101 - 40) / 10 + 0.001 * i for i in range(30)],
    [((i * 37) % 101 - 40) / 10 + 0.001 * i for i in range(60)],
]

print(f"# scipy {scipy.__version__}")
print("# ttest_ind(a, b, equal_var=False): (t, p, df)")
for a, b in PAIRED:
    r = stats.ttest_ind(a, b, equal_var=False)
    print(f"({float(r.statistic)!r}, {float(r.pvalue)!r}, {float(r.df)!r}),")
print("# ttest_rel(a, b): (t, p, df)")
for a, b in PAIRED:
    r = stats.ttest_rel(a, b)
    print(f"({float(r.statistic)!r}, {float(r.pvalue)!r}, {float(r.df)!r}),")
print("# wilcoxon(d): (statistic, p) for the cases")
for d in WILCOXON:
    r = stats.wilcoxon(d)
    print(f"# n={len(d)}")
    print(f"({float(r.statistic)!r}, {float(r.pvalue)!r}),")
print("# wilcoxon(a - b) of the paired cases: (statistic, p)")
for a, b in PAIRED:
    r = stats.wilcoxon(np.subtract(a, b))
    print(f"({float(r.statistic)!r}, {float(r.pvalue)!r}),")
