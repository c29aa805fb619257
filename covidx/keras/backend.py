"""keras.backend: clear_session (restarts the automatic layer names; covidx keeps no graph to free)."""
from ..head import clear_session  # noqa: F401


def backend():
    """The name of the backend: covidx's own C engine."""
    return "covidx"
