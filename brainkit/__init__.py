"""brainkit: brain-age estimation with contrastive learning.

Reproduces and extends Barbano et al., "Robust brain age estimation from structural MRI
with contrastive learning". Subpackages:

- :mod:`brainkit.data`: the cohort table, images, splits, the synthetic default, augmentations
- :mod:`brainkit.models`: 3D ResNets and heads
- :mod:`brainkit.losses`: kernels, y-aware, threshold, exp, RnC, AdapN
- :mod:`brainkit.train`: the training engine
- :mod:`brainkit.eval`: probes, challenge score, brain-age gap, longitudinal, calibration
- :mod:`brainkit.plots`: plotly figures for every analysis
- :mod:`brainkit.errors`: the error classes of user mistakes (one line on the command line)
"""

__version__ = "0.1.0"
