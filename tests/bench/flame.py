"""``python -m tests.bench.flame FOLDED PNG [TITLE]``: a flame graph (PNG) of py-spy's folded stacks."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

# frames of the worker's start-up machinery, above the event loop: the same in every profile, so cut
NOISE = ("<module>", "click/", "mode/worker", "faust/cli/", "run_until_complete", "run_forever")


def load(path: Path) -> dict[tuple[str, ...], int]:
    stacks: dict[tuple[str, ...], int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = tuple(f.split(" (")[0] for f in stack.split(";") if not any(n in f for n in NOISE))
        stacks[frames] += int(count)
    return stacks


def render(folded: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = load(folded)
    total = sum(stacks.values())
    # each frame's box: (depth, start, width) in samples, children laid out left to right in name order
    boxes: list[tuple[int, float, float, str]] = []

    def lay(prefix: tuple[str, ...], start: float, depth: int) -> None:
        children: dict[str, int] = defaultdict(int)
        for frames, count in stacks.items():
            if len(frames) > depth and frames[:depth] == prefix:
                children[frames[depth]] += count
        for name in sorted(children):
            width = children[name]
            if width / total >= 0.002:
                boxes.append((depth, start, width, name))
                lay((*prefix, name), start, depth + 1)
            start += width

    lay((), 0.0, 0)
    depth = max(d for d, _, _, _ in boxes) + 1
    fig, ax = plt.subplots(figsize=(16, max(4, depth * 0.22)))
    for d, start, width, name in boxes:
        ax.barh(d, width, left=start, height=0.95, color=plt.cm.autumn(hash(name) % 100 / 100), edgecolor="white")
        if width / total > 0.04:
            ax.text(start + width / 2, d, name[: int(width / total * 160)], ha="center", va="center", fontsize=6)
    ax.set_xlim(0, total)
    ax.set_ylim(-0.5, depth)
    ax.set_yticks([])
    ax.set_xlabel(f"samples ({total:,} holding the GIL)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    render(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else sys.argv[1])
