"""One word per meaning: the old core names stay as deprecated aliases of the new ones."""

from agfprune.core import calibration, pruning
from agfprune.core.pruning import bn_recalibration
from agfprune.core.routing import calibrate as routing_calibrate


def test_deprecated_names_are_the_renamed_functions() -> None:
    assert calibration.calibrate is calibration.collect_statistics
    assert bn_recalibration.recalibrate_batchnorm is bn_recalibration.reestimate_batchnorm
    assert pruning.recalibrate_batchnorm is pruning.reestimate_batchnorm
    assert routing_calibrate.calibrate_router is routing_calibrate.fit_threshold
