"""The export stage's entry from a checkout: ``python -m export RUN_DIR``.

No logic lives here: the export is ``ffsd_tf.export`` (installed with the package; its console
script is ``ffsd-export``). This package only re-exports its public names for scripts that
``import export``.
"""

from ffsd_tf.export import *  # noqa: F401,F403
from ffsd_tf.export import __all__  # noqa: F401
