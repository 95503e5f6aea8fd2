"""The decode benchmark's plot: throughput and the diffusion/AR ratio vs output length, one line per
batch size, from the length sweep (both decoders generate exactly L tokens, the stop ignored)."""

from __future__ import annotations

from pathlib import Path

from dgr2.plotting import pyplot, save


def plot_lengths(result: dict, path: str | Path) -> bool:
    """Write the PNG; False (nothing written) when the result holds no fixed-length runs."""
    runs = [r for r in result["runs"] if r["output_length"] is not None]
    ratios = [s for s in result["speedup"] if s["output_length"] is not None]
    if not runs:
        return False
    plt = pyplot()
    batches = sorted({r["batch_size"] for r in runs})
    colors = {b: plt.cm.viridis(i / max(len(batches) - 1, 1) * 0.85) for i, b in enumerate(batches)}
    fig, (ax_tp, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    for b in batches:
        for decoder, style in (("ar", "--"), ("diffusion", "-")):
            pts = sorted((r["output_length"], r["tokens_per_s"]) for r in runs
                         if r["batch_size"] == b and r["decoder"] == decoder)
            if pts:
                ax_tp.plot(*zip(*pts, strict=True), style, marker="o", color=colors[b],
                           label=f"{decoder}, batch {b}")
        pts = sorted((s["output_length"], s["ratio"]) for s in ratios if s["batch_size"] == b)
        if pts:
            ax_ratio.plot(*zip(*pts, strict=True), "-", marker="o", color=colors[b], label=f"batch {b}")
    lengths = sorted({r["output_length"] for r in runs})
    for ax in (ax_tp, ax_ratio):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ax.set_xlabel("output length L (tokens, stop ignored)")
        ax.grid(True, alpha=0.3)
    ax_tp.set_yscale("log")
    ax_tp.set_ylabel("generated tokens / s")
    ax_tp.set_title("decode throughput")
    ax_tp.legend(fontsize=7)
    ax_ratio.axhline(1.0, color="grey", lw=0.8)
    ax_ratio.set_ylim(bottom=0)
    ax_ratio.set_ylabel("diffusion / AR tokens per second")
    ax_ratio.set_title("speed-up of block diffusion over AR")
    ax_ratio.legend(fontsize=7)
    m = result["machine"]
    block = sorted({r["block_size"] for r in runs if r["decoder"] == "diffusion"})
    threshold = sorted({r["threshold"] for r in runs if r["decoder"] == "diffusion"})
    block_text = block[0] if len(block) == 1 else block
    threshold_text = threshold[0] if len(threshold) == 1 else threshold
    fig.suptitle(f"{m['name']} ({m['device']}, kernels {m['kernels']}), diffusion block {block_text}, threshold "
                 f"{threshold_text}.\nBoth decoders generate exactly L "
                 "tokens (stop ignored) with the same model code, KV cache and kernels.", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return True
