#!/usr/bin/python3
"""sim_plot.py: the plots of `duel sim sweep` (cli/sim_sweep.c embeds this file and runs it with
Debian's /usr/bin/python3 and python3-matplotlib).

usage: sim_plot.py SUMMARY.csv OUT_DIR

SUMMARY.csv has one row per (strategy, mode, queries) with the mean and standard error over
seeds of each measure (columns NAME_mean, NAME_se). Writes, in the shape of the SEA paper's
figures (measure against queries, one line per strategy and mode, a band of +-1 standard error):
  offline_win_rate.png  held-out win rate against the base model's answers (share with P > 1/2)
  offline_mean_p.png    held-out mean P
  online_score.png      mean oracle score of the answers shown to the users
  kl.png                KL of the policy to the base
Exit status 0, or 1 with a message (matplotlib missing, an empty or malformed CSV)."""
import csv
import sys

PLOTS = [
    ("offline_win_rate.png", "win_share", "offline: held-out win rate over the base (P > 1/2)"),
    ("offline_mean_p.png", "mean_p", "offline: held-out mean P(policy beats base)"),
    ("online_score.png", "online_score", "online: mean oracle score of the answers shown"),
    ("kl.png", "kl", "KL(policy || base), nats"),
]


def read(path):
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["strategy"], row["mode"])
            series.setdefault(key, []).append(row)
    if not series:
        raise ValueError(f"{path}: no rows")
    return series


def value(row, name):
    text = row.get(name, "")
    return float(text) if text not in ("", "nan", "null") else None


def plot(series, measure, title, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for (strategy, mode), rows in sorted(series.items()):
        pts = [(int(r["queries"]), value(r, measure + "_mean"), value(r, measure + "_se") or 0.0) for r in rows]
        pts = sorted(p for p in pts if p[1] is not None)
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        lo = [p[1] - p[2] for p in pts]
        hi = [p[1] + p[2] for p in pts]
        style = "-" if mode == "online" else "--"
        line = ax.plot(x, y, style, marker="o", markersize=3, label=f"{strategy} ({mode})")[0]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("queries")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv):
    if len(argv) != 3:
        print(__doc__.splitlines()[3], file=sys.stderr)
        return 1
    try:
        series = read(argv[1])
        import matplotlib  # noqa: F401  (a clear message when it is missing)
    except ImportError:
        print("sim_plot.py: matplotlib is missing (Debian: apt-get install python3-matplotlib)", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as e:
        print(f"sim_plot.py: {e}", file=sys.stderr)
        return 1
    for name, measure, title in PLOTS:
        plot(series, measure, title, f"{argv[2]}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
