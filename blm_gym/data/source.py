"""One interface over every scene source (ScenarioNet pickles, trajdata, synthetic)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from blm_gym.data.scene import Scene

DATA_ENV_VAR = "BLM_GYM_DATA"


@runtime_checkable
class SceneSource(Protocol):
    """A finite, indexable collection of scenes, loaded lazily.

    ``scene_ids`` lists every scene (e.g. ``"scene-0103"``); ``load(i)`` builds scene ``i``
    (sources cache what is expensive, such as the drivable area).
    """

    name: str

    @property
    def scene_ids(self) -> Sequence[str]: ...

    def load(self, index: int) -> Scene: ...


class SceneList:
    """Scenes already in memory as a :class:`SceneSource` (e.g. validation scenes set aside)."""

    def __init__(self, scenes: Sequence[Scene], name: str = "scenes"):
        self.scenes, self.name = list(scenes), name

    @property
    def scene_ids(self) -> tuple[str, ...]:
        return tuple(s.scene_id for s in self.scenes)

    def load(self, index: int) -> Scene:
        return self.scenes[index]


def resolve_data_dir(data_dir: str | os.PathLike | None, what: str) -> Path:
    """The folder to read ``what`` from: the ``data_dir`` argument, else ``$BLM_GYM_DATA``.

    Raises FileNotFoundError that names both ways of giving it.
    """
    if data_dir is None:
        env = os.environ.get(DATA_ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"No data folder for {what}: pass data_dir=... (e.g. gym.make(..., data_dir='~/data/nuscenes')) "
                f"or set the environment variable {DATA_ENV_VAR}. ScenarioNet folders come from ScenarioNet's "
                "converters; raw nuScenes from nuscenes.org (read through trajdata)."
            )
        data_dir = env
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Data folder for {what} does not exist: {path} (from the data_dir argument or ${DATA_ENV_VAR}); "
            "point it at a ScenarioNet folder or a raw nuScenes root."
        )
    return path
