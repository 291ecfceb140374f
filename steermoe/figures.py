"""Figures drawn off-screen (matplotlib's Agg backend) and saved as PNG bytes that do not change between runs."""
from __future__ import annotations

import io


def figure_bytes(fig) -> bytes:
    """The figure as PNG bytes, without the matplotlib version in the metadata (the same plot, the same bytes)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def pyplot():
    """pyplot on the off-screen Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
