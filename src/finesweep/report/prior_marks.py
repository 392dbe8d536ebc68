"""The search's prior on the report's slice plot: a dashed vertical line at each searched key's prior value.

Optuna's ``plot_slice`` draws one panel a parameter and titles each panel's x axis with the parameter's name; the
line goes into the panel whose axis carries the key's name, as a trace (a trace's x is a data value on a log or a
categorical axis alike, where a shape's is not).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import plotly.graph_objects as go

from finesweep.config.space import Param

PRIOR_COLOR = "#6a4c93"


def mark_priors(figure: go.Figure, params: Sequence[Param]) -> List[str]:
    """Draw each key's prior into its slice panel; the keys marked."""
    priors = {p.key: p for p in params if p.prior is not None}
    panels = _panels(figure)
    ys = [float(y) for trace in figure.data for y in (getattr(trace, "y", None) or ()) if y is not None]
    if not priors or not ys:
        return []
    marked: List[str] = []
    for key, param in priors.items():
        if key not in panels:
            continue
        xaxis, yaxis = panels[key]
        value = param.to_optuna_value(param.prior)
        figure.add_trace(go.Scatter(x=[value, value], y=[min(ys), max(ys)], mode="lines", xaxis=xaxis, yaxis=yaxis,
                                    line={"color": PRIOR_COLOR, "dash": "dash", "width": 2},
                                    name=f"prior ({param.prior_confidence.value})", legendgroup="prior",
                                    showlegend=not marked, hovertext=f"{key} prior {value}", hoverinfo="text"))
        marked.append(key)
    return marked


def _panels(figure: go.Figure) -> Dict[str, Any]:
    """Parameter name -> (x axis id, y axis id) of its panel, from the axis titles."""
    panels: Dict[str, Any] = {}
    layout = figure.layout.to_plotly_json()
    for name, axis in layout.items():
        if not name.startswith("xaxis"):
            continue
        title = (axis.get("title") or {}).get("text")
        suffix = name[len("xaxis"):]
        if title:
            panels[str(title)] = (f"x{suffix}", f"y{suffix}")
    return panels
