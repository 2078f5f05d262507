"""Structural pruning on torch-pruning's dependency graph, with agfprune's scores and records.

Modules: options (ratio semantics), groups (groups and score tables), allocation (global ranking
with per-layer caps), vit (attention heads), bn_recalibration, record, engine (prune_model),
save (self-describing checkpoints).
"""

from agfprune.core.pruning.bn_recalibration import recalibrate_batchnorm, reestimate_batchnorm
from agfprune.core.pruning.engine import MetricScorer, PruneResult, StoredScorer, prune_model
from agfprune.core.pruning.groups import ScoreTable, classifier_modules
from agfprune.core.pruning.options import TARGETS, PruneOptions
from agfprune.core.pruning.record import PruneRecord
from agfprune.core.pruning.run import PruneRequest, run_prune
from agfprune.core.pruning.save import save_pruned

__all__ = ["MetricScorer", "PruneOptions", "PruneRequest", "run_prune", "PruneRecord", "PruneResult", "ScoreTable", "StoredScorer",
           "TARGETS", "classifier_modules", "prune_model", "recalibrate_batchnorm", "reestimate_batchnorm",
           "save_pruned"]
