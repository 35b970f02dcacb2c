"""The Consul-free core: values, strategies, breakers, detectors, config models.

Nothing in this package performs I/O or imports python-consul2; time, sleep and randomness
are injected. The adapter in :mod:`lake_mesh_consul._consul` is the only place that talks
to Consul.
"""

import logging as _logging

# A library leaves log output to the application (the logging HOWTO's advice): without this,
# our warnings would reach stderr through logging's last-resort handler when the application
# configured no logging. Set here, not in the package's __init__, to keep `import
# lake_mesh_consul` free of the logging import; every module that logs imports this package.
_logging.getLogger("lake_mesh_consul").addHandler(_logging.NullHandler())
