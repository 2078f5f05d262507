"""Structural pruning on torch-pruning's dependency graph, with agfprune's scores and records.

Modules: options (ratio semantics), groups (groups and score tables), scorers (where a step's scores
come from), allocation (how many channels each group loses; global ranking with per-layer caps),
ratio_search (--target params|macs), pruner (the torch-pruning pruner and one step), vit (attention
heads), bn_recalibration (BatchNorm re-estimation), record, engine (prune_model, the driver), run (the
`prune` command), save (self-describing checkpoints).
"""

from agfprune.core.pruning.bn_recalibration import recalibrate_batchnorm, reestimate_batchnorm
from agfprune.core.pruning.engine import PruneResult, prune_model
from agfprune.core.pruning.groups import ScoreTable, classifier_modules
from agfprune.core.pruning.options import TARGETS, PruneOptions
from agfprune.core.pruning.record import PruneRecord
from agfprune.core.pruning.run import PruneRequest, run_prune
from agfprune.core.pruning.save import save_pruned
from agfprune.core.pruning.scorers import MetricScorer, StoredScorer

__all__ = ["MetricScorer", "PruneOptions", "PruneRequest", "run_prune", "PruneRecord", "PruneResult", "ScoreTable", "StoredScorer",
           "TARGETS", "classifier_modules", "prune_model", "recalibrate_batchnorm", "reestimate_batchnorm",
           "save_pruned"]
