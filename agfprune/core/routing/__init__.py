"""Hybrid routing: a light (pruned) expert answers first, a heavy one only where it is unsure.

signals (zero-cost confidence scores), calibrate (threshold from stored logits), cascade (the
deployable module), router_file (router.yaml), cost (the two labelled cost formulas), report
(`route eval`), deploy (load and export).
"""

from agfprune.core.routing.cascade import Cascade, GradientCascade, make_cascade
from agfprune.core.routing.deploy import export_router, load_router
from agfprune.core.routing.signals import (DYNAMIC_SIGNALS, SIGNALS, compute_signal, get_signal,
                                           register_dynamic_signal, register_signal)

__all__ = ["DYNAMIC_SIGNALS", "SIGNALS", "Cascade", "GradientCascade", "compute_signal", "export_router",
           "get_signal", "load_router", "make_cascade", "register_dynamic_signal", "register_signal"]
